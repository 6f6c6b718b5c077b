//! [`Graph`] (the handle to one tape) and [`Var`] (a value, and where it sits on the tape).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use tensor::Tensor;

use crate::param::Param;
use crate::tape::{Backward, NodeKind, SharedTape, Tape};

thread_local! {
    static NO_GRAD_DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// Runs `f` with recording switched off: every op inside returns a constant and saves nothing
/// (PyTorch's `torch.no_grad()`). Scopes nest.
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    struct Restore;
    impl Drop for Restore {
        fn drop(&mut self) {
            NO_GRAD_DEPTH.with(|d| d.set(d.get() - 1));
        }
    }
    NO_GRAD_DEPTH.with(|d| d.set(d.get() + 1));
    let _restore = Restore;
    f()
}

/// False inside a [`no_grad`] scope.
pub fn is_grad_enabled() -> bool {
    NO_GRAD_DEPTH.with(|d| d.get() == 0)
}

/// One computation's tape. Create one per training step (or per gradient you need); leaves and
/// parameters enter through it, and every op on them is recorded on it. Dropping the graph and
/// the [`Var`]s that refer to it frees the tape.
#[derive(Clone, Default)]
pub struct Graph {
    tape: SharedTape,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Graph {
        Graph {
            tape: Rc::new(RefCell::new(Tape::default())),
        }
    }

    /// A leaf that requires a gradient; after backward, read it with [`Var::grad`].
    pub fn leaf(&self, value: Tensor) -> Var {
        let id = self
            .tape
            .borrow_mut()
            .push(NodeKind::Leaf { grad: None }, value.shape());
        Var {
            value,
            node: Some(NodeRef {
                tape: Rc::clone(&self.tape),
                id,
            }),
        }
    }

    /// The current value of `param` as a leaf whose gradient is added into `param`'s.
    /// Inside [`no_grad`] it is a constant.
    pub fn param(&self, param: &Param) -> Var {
        let value = param.value();
        if !is_grad_enabled() {
            return Var::constant(value);
        }
        let id = self
            .tape
            .borrow_mut()
            .push(NodeKind::Param(param.clone()), value.shape());
        Var {
            value,
            node: Some(NodeRef {
                tape: Rc::clone(&self.tape),
                id,
            }),
        }
    }

    /// How many nodes the tape holds (leaves and recorded ops).
    pub fn len(&self) -> usize {
        self.tape.borrow().nodes.len()
    }

    /// True if nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Clone)]
struct NodeRef {
    tape: SharedTape,
    id: usize,
}

/// A tensor value together with its place on a tape (if it requires a gradient).
///
/// Cloning is cheap: the value's storage is shared. A `Var` with no place on a tape is a
/// constant: ops on constants only compute, and record nothing.
#[derive(Clone)]
pub struct Var {
    value: Tensor,
    node: Option<NodeRef>,
}

impl Var {
    /// A constant: its value takes part in ops but no gradient flows to it.
    pub fn constant(value: Tensor) -> Var {
        Var { value, node: None }
    }

    /// The value.
    pub fn value(&self) -> &Tensor {
        &self.value
    }

    /// The value's shape.
    pub fn shape(&self) -> &[usize] {
        self.value.shape()
    }

    /// The graph this value is recorded on (`None` for a constant).
    pub fn graph(&self) -> Option<Graph> {
        self.node.as_ref().map(|n| Graph {
            tape: Rc::clone(&n.tape),
        })
    }

    /// True if a gradient flows to this value (it is on a tape).
    pub fn requires_grad(&self) -> bool {
        self.node.is_some()
    }

    /// The same value as a constant, cut from the tape (PyTorch's `detach`).
    pub fn detach(&self) -> Var {
        Var::constant(self.value.clone())
    }

    /// Records the output of an op. `inputs` are the op's inputs in the order its `rule`
    /// returns their gradients. Inside [`no_grad`], or when no input requires a gradient, the
    /// output is a constant and `rule` (with the tensors it saved) is dropped at once.
    pub fn from_op(value: Tensor, rule: impl Backward + 'static, inputs: &[&Var]) -> Var {
        if !is_grad_enabled() {
            return Var::constant(value);
        }
        let mut tape: Option<&SharedTape> = None;
        for input in inputs.iter().filter_map(|v| v.node.as_ref()) {
            match tape {
                None => tape = Some(&input.tape),
                Some(t) => assert!(
                    Rc::ptr_eq(t, &input.tape),
                    "{}: inputs belong to different graphs",
                    rule.name()
                ),
            }
        }
        let Some(tape) = tape else {
            return Var::constant(value);
        };
        let ids: Vec<Option<usize>> = inputs
            .iter()
            .map(|v| v.node.as_ref().map(|n| n.id))
            .collect();
        let id = tape.borrow_mut().push(
            NodeKind::Op {
                rule: Some(Box::new(rule)),
                inputs: ids,
            },
            value.shape(),
        );
        Var {
            value,
            node: Some(NodeRef {
                tape: Rc::clone(tape),
                id,
            }),
        }
    }

    /// Back-propagates from this scalar (one-element) value: dL/dL = 1.
    pub fn backward(&self) {
        assert_eq!(
            self.value.numel(),
            1,
            "backward: needs a one-element output, got shape {:?}; use backward_with for tensors",
            self.shape()
        );
        self.backward_with(Tensor::full(self.shape(), 1.0));
    }

    /// Back-propagates `grad` = dL/d(self) through the tape. Leaf gradients (and parameter
    /// gradients) accumulate over calls; the rules that ran are freed.
    pub fn backward_with(&self, grad: Tensor) {
        assert_eq!(
            grad.shape(),
            self.shape(),
            "backward_with: gradient of shape {:?} for a value of shape {:?}",
            grad.shape(),
            self.shape()
        );
        let node = self.node.as_ref().unwrap_or_else(|| {
            panic!("backward: this value does not require a gradient (a constant, or made under no_grad)")
        });
        node.tape.borrow_mut().backward(node.id, grad);
    }

    /// The gradient accumulated in this leaf (`None` before backward reaches it, and for values
    /// that are not leaves made by [`Graph::leaf`]; a parameter's gradient is in the [`Param`]).
    pub fn grad(&self) -> Option<Tensor> {
        let node = self.node.as_ref()?;
        match &node.tape.borrow().nodes[node.id].kind {
            NodeKind::Leaf { grad } => grad.clone(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    //! Tests of the tape itself, with two tiny ops defined here so they do not depend on the
    //! op library: element-wise product and sum of all elements.
    use super::*;
    use crate::gradcheck::{gradcheck, Tolerance};

    /// y = a * b element-wise: dL/da = g * b, dL/db = g * a.
    struct MulRule {
        a: Tensor,
        b: Tensor,
    }
    impl Backward for MulRule {
        fn name(&self) -> &'static str {
            "test_mul"
        }
        fn backward(&self, g: &Tensor, _needs: &[bool]) -> Vec<Option<Tensor>> {
            let prod = |x: &Tensor| {
                let data = g.data().iter().zip(x.data()).map(|(p, q)| p * q).collect();
                Tensor::from_vec(data, g.shape())
            };
            vec![Some(prod(&self.b)), Some(prod(&self.a))]
        }
    }
    fn mul(a: &Var, b: &Var) -> Var {
        let data = a
            .value()
            .data()
            .iter()
            .zip(b.value().data())
            .map(|(p, q)| p * q)
            .collect();
        let rule = MulRule {
            a: a.value().clone(),
            b: b.value().clone(),
        };
        Var::from_op(Tensor::from_vec(data, a.shape()), rule, &[a, b])
    }

    /// y = sum(x): dL/dx = g broadcast to x's shape.
    struct SumRule {
        shape: Vec<usize>,
    }
    impl Backward for SumRule {
        fn name(&self) -> &'static str {
            "test_sum"
        }
        fn backward(&self, g: &Tensor, _needs: &[bool]) -> Vec<Option<Tensor>> {
            vec![Some(Tensor::full(&self.shape, g.item()))]
        }
    }
    fn sum(x: &Var) -> Var {
        let total = x.value().data().iter().sum();
        Var::from_op(
            Tensor::scalar(total),
            SumRule {
                shape: x.shape().to_vec(),
            },
            &[x],
        )
    }

    fn t(values: &[f32]) -> Tensor {
        Tensor::from_vec(values.to_vec(), &[values.len()])
    }

    #[test]
    fn product_rule_and_shared_inputs() {
        // L = sum(x * x * y): dL/dx = 2 x y, dL/dy = x^2. x is used twice, so its two
        // contributions must be added.
        let g = Graph::new();
        let x = g.leaf(t(&[1.0, 2.0, -3.0]));
        let y = g.leaf(t(&[4.0, 5.0, 6.0]));
        sum(&mul(&mul(&x, &x), &y)).backward();
        assert_eq!(x.grad().unwrap().data(), &[8.0, 20.0, -36.0]);
        assert_eq!(y.grad().unwrap().data(), &[1.0, 4.0, 9.0]);
    }

    #[test]
    fn gradients_accumulate_across_backward_calls() {
        let g = Graph::new();
        let x = g.leaf(t(&[1.0, 2.0]));
        sum(&mul(&x, &x)).backward();
        sum(&mul(&x, &x)).backward();
        assert_eq!(x.grad().unwrap().data(), &[4.0, 8.0]);
    }

    #[test]
    fn params_collect_gradients_and_graphs_are_freed() {
        let p = Param::new(t(&[3.0]));
        for _ in 0..2 {
            let g = Graph::new();
            let w = g.param(&p);
            sum(&mul(&w, &w)).backward();
        }
        assert_eq!(p.grad().unwrap().data(), &[12.0]);
        p.zero_grad();
        assert!(p.grad().is_none());
    }

    #[test]
    fn constants_detach_and_no_grad_record_nothing() {
        let g = Graph::new();
        let x = g.leaf(t(&[2.0]));
        let c = Var::constant(t(&[5.0]));
        let y = mul(&x, &c);
        assert!(y.requires_grad());
        assert!(!mul(&c, &c).requires_grad());
        assert!(!mul(&x.detach(), &c).requires_grad());
        let before = g.len();
        let z = no_grad(|| mul(&x, &x));
        assert!(!z.requires_grad());
        assert_eq!(g.len(), before);
        assert!(is_grad_enabled());
        sum(&y).backward();
        assert_eq!(x.grad().unwrap().data(), &[5.0]);
    }

    /// True if no other tensor shares `t`'s storage (a write does not need to copy).
    fn is_unique(t: &mut Tensor) -> bool {
        let before = t.data().as_ptr();
        before == t.data_mut().as_ptr()
    }

    #[test]
    fn saved_tensors_are_freed_by_backward() {
        // The leaf goes out of scope at once, but the product's rule saves two clones of its
        // value; only the rule can keep the storage shared.
        let build = |value: &Tensor| {
            let g = Graph::new();
            let loss = sum(&mul(&g.leaf(value.clone()), &g.leaf(value.clone())));
            (g, loss)
        };
        let mut kept = t(&[1.0, 2.0]);
        let (_g, _loss) = build(&kept);
        assert!(
            !is_unique(&mut kept),
            "before backward the rule holds the value"
        );

        let mut freed = t(&[1.0, 2.0]);
        let (g, loss) = build(&freed);
        loss.backward();
        assert!(
            is_unique(&mut freed),
            "backward must drop the rule's saved tensors"
        );
        assert_eq!(g.len(), 4); // the graph itself is still alive
    }

    #[test]
    #[should_panic(expected = "already differentiated")]
    fn second_backward_through_a_freed_graph_panics() {
        let g = Graph::new();
        let x = g.leaf(t(&[1.0]));
        let loss = sum(&mul(&x, &x));
        loss.backward();
        loss.backward();
    }

    #[test]
    fn gradcheck_accepts_a_correct_rule_and_rejects_a_wrong_one() {
        let inputs = [t(&[0.5, -1.5, 2.0]), t(&[1.0, 0.25, -0.75])];
        gradcheck(|v| mul(&v[0], &v[1]), &inputs, Tolerance::default()).unwrap();

        struct WrongRule;
        impl Backward for WrongRule {
            fn name(&self) -> &'static str {
                "wrong"
            }
            fn backward(&self, g: &Tensor, _needs: &[bool]) -> Vec<Option<Tensor>> {
                vec![Some(g.clone())] // claims d(x^2)/dx = 1
            }
        }
        let square_wrong = |v: &[Var]| {
            let data = v[0].value().data().iter().map(|x| x * x).collect();
            Var::from_op(Tensor::from_vec(data, v[0].shape()), WrongRule, &[&v[0]])
        };
        assert!(gradcheck(square_wrong, &inputs[..1], Tolerance::default()).is_err());
    }
}
