//! What a forward pass needs besides its input: the graph to record on, whether it is
//! training, and a random stream for dropout.

use tensor::rng::Rng;

use crate::{Graph, Param, Var};

/// The context of one forward pass.
pub struct Ctx {
    /// The graph every op and parameter of this pass is recorded on.
    pub graph: Graph,
    /// Training mode: dropout is active. In evaluation mode it passes values through.
    pub training: bool,
    /// The random stream dropout draws its masks from.
    pub rng: Rng,
}

impl Ctx {
    /// A training-mode context on a fresh graph.
    pub fn train(rng: Rng) -> Ctx {
        Ctx {
            graph: Graph::new(),
            training: true,
            rng,
        }
    }

    /// An evaluation-mode context on a fresh graph (combine with [`crate::no_grad`] to record
    /// nothing).
    pub fn eval() -> Ctx {
        Ctx {
            graph: Graph::new(),
            training: false,
            rng: Rng::new(0, 0),
        }
    }

    /// An evaluation-mode context on the graph `x` is recorded on (a fresh one if `x` is a
    /// constant), so parameters and input share one tape.
    pub fn eval_on(x: &Var) -> Ctx {
        Ctx {
            graph: x.graph().unwrap_or_default(),
            ..Ctx::eval()
        }
    }

    /// `param`'s value as a variable of this pass.
    pub fn param(&self, param: &Param) -> Var {
        self.graph.param(param)
    }
}

/// A layer or a network: a function of one input with parameters.
pub trait Module {
    /// Computes the output for `x`.
    fn forward(&self, ctx: &mut Ctx, x: &Var) -> Var;
}

/// Modules applied one after another (PyTorch's `nn.Sequential`).
#[derive(Default)]
pub struct Sequential {
    layers: Vec<Box<dyn Module>>,
}

impl Sequential {
    /// An empty sequence.
    pub fn new() -> Sequential {
        Sequential::default()
    }

    /// Appends a layer.
    pub fn push(mut self, layer: impl Module + 'static) -> Sequential {
        self.layers.push(Box::new(layer));
        self
    }
}

impl Module for Sequential {
    fn forward(&self, ctx: &mut Ctx, x: &Var) -> Var {
        self.layers
            .iter()
            .fold(x.clone(), |h, layer| layer.forward(ctx, &h))
    }
}
