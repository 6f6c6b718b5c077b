//! The tape: an arena of nodes pushed in execution order, and the reverse sweep over it.
//!
//! Every recorded op pushes one [`Node`] holding its [`Backward`] rule (with whatever tensors
//! that rule saved) and the ids of its recorded inputs. Because an op's inputs are always
//! pushed before the op itself, the push order is already a topological order: backward is a
//! single sweep from the output down to id 0, with no sorting and no hashing. The first
//! gradient that reaches a node is stored as is; later ones are added to it, by the rule that
//! computes them where it can ([`Backward::backward_accumulate`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Mutex;

use tensor::Tensor;

use crate::deferred::{count_job, defers_leaf_gradients, Deferred};
use crate::param::Param;

/// The vector-Jacobian product of one recorded op.
///
/// Given `grad_output` = dL/dy for the op's output y, return dL/dx_i for each input x_i, in
/// the order the op listed its inputs. An entry may be `None` when `needs[i]` is false (the
/// input does not require a gradient), which lets ops skip work.
pub trait Backward {
    /// The op's name, for error messages.
    fn name(&self) -> &'static str;
    /// dL/dx_i from dL/dy.
    fn backward(&self, grad_output: &Tensor, needs: &[bool]) -> Vec<Option<Tensor>>;

    /// [`Backward::backward`] when some inputs already have a gradient from another path:
    /// `acc[i]` (if `Some`) is that gradient, and entry `i` of the result must be
    /// `acc[i] + dL/dx_i` (or `acc[i]` itself if this rule gives input `i` nothing). The
    /// default adds the two after [`Backward::backward`]; a rule whose kernel can add as it
    /// writes overrides this to save that pass over memory (with the same bits:
    /// `acc + computed`, rounded once).
    fn backward_accumulate(
        &self,
        grad_output: &Tensor,
        needs: &[bool],
        acc: Vec<Option<Tensor>>,
    ) -> Vec<Option<Tensor>> {
        let grads = self.backward(grad_output, needs);
        if grads.len() != acc.len() {
            // The tape reports the wrong count.
            return grads;
        }
        add_gradients(acc, grads)
    }

    /// [`Backward::backward_accumulate`], except that the gradients of the inputs marked in
    /// `later` (leaves with no gradient in `acc`) may be left out of the result and returned
    /// as a job instead, which gives them (and nothing else) when run. The default computes
    /// everything now; a rule overrides this where a leaf's gradient is much work.
    fn backward_split(
        &self,
        grad_output: &Tensor,
        needs: &[bool],
        acc: Vec<Option<Tensor>>,
        later: &[bool],
    ) -> (Vec<Option<Tensor>>, Option<Deferred>) {
        let _ = later;
        (self.backward_accumulate(grad_output, needs, acc), None)
    }
}

/// `acc[i] + grads[i]` entry by entry (either alone where the other is `None`).
pub(crate) fn add_gradients(
    acc: Vec<Option<Tensor>>,
    grads: Vec<Option<Tensor>>,
) -> Vec<Option<Tensor>> {
    acc.into_iter()
        .zip(grads)
        .map(|(mut a, g)| {
            if let Some(g) = g {
                accumulate(&mut a, g);
            }
            a
        })
        .collect()
}

/// What a node is: a leaf that collects its gradient, or the output of a recorded op.
pub(crate) enum NodeKind {
    /// A leaf created by [`crate::Graph::leaf`]: its gradient is kept in the node.
    Leaf { grad: Option<Tensor> },
    /// A leaf bound to a parameter: its gradient is added into the parameter's.
    Param(Param),
    /// An op's output. `rule` is taken (and its saved tensors freed) by the backward sweep.
    /// `inputs[i]` is the node of the op's i-th input, or `None` for a constant input.
    Op {
        rule: Option<Box<dyn Backward>>,
        inputs: Vec<Option<usize>>,
    },
}

pub(crate) struct Node {
    pub kind: NodeKind,
    /// The output's shape, to check the gradients that arrive.
    pub shape: Vec<usize>,
}

/// The arena of nodes.
#[derive(Default)]
pub(crate) struct Tape {
    pub nodes: Vec<Node>,
}

pub(crate) type SharedTape = Rc<RefCell<Tape>>;

/// Adds `g` into the gradient slot `slot`: stores it if the slot is empty, adds it otherwise.
pub(crate) fn accumulate(slot: &mut Option<Tensor>, g: Tensor) {
    match slot {
        None => *slot = Some(g),
        Some(existing) => {
            assert_eq!(
                existing.shape(),
                g.shape(),
                "gradient accumulation: shapes disagree"
            );
            // In parallel, in place (into fresh storage if the storage is shared).
            existing.add_assign(&g);
        }
    }
}

impl Tape {
    /// Pushes a node and returns its id.
    pub fn push(&mut self, kind: NodeKind, shape: &[usize]) -> usize {
        self.nodes.push(Node {
            kind,
            shape: shape.to_vec(),
        });
        self.nodes.len() - 1
    }

    /// The reverse sweep: starting from `seed` = dL/d(node `output`), runs every backward rule
    /// reachable from `output` once, in reverse push order, and delivers the leaf gradients.
    /// Each rule is dropped after it runs, so the tensors it saved are freed as the sweep goes
    /// (but for those a deferred job reads, which it keeps until it has run).
    pub fn backward(&mut self, output: usize, seed: Tensor) {
        // The deferred jobs' gradients, with the jobs' order and their inputs' nodes.
        type Done = (usize, Vec<Option<usize>>, Vec<Option<Tensor>>);
        let done: Mutex<Vec<Done>> = Mutex::new(Vec::new());
        rayon::in_place_scope(|scope| {
            let mut jobs = 0;
            self.sweep(output, seed, |inputs, job| {
                let done = &done;
                let order = jobs;
                jobs += 1;
                count_job();
                scope.spawn(move |_| {
                    let grads = job();
                    done.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((order, inputs, grads));
                });
            });
        });
        let mut done = done.into_inner().unwrap_or_else(|e| e.into_inner());
        done.sort_by_key(|d| d.0);
        for (_, inputs, grads) in done {
            for (input, g) in inputs.into_iter().zip(grads) {
                if let (Some(input), Some(g)) = (input, g) {
                    match &mut self.nodes[input].kind {
                        NodeKind::Leaf { grad: slot } => accumulate(slot, g),
                        NodeKind::Param(param) => param.accumulate_grad(g),
                        NodeKind::Op { .. } => unreachable!("only leaves' gradients are deferred"),
                    }
                }
            }
        }
    }

    /// The sweep of [`Tape::backward`], handing each deferred job with its rule's input nodes
    /// to `defer`.
    fn sweep(
        &mut self,
        output: usize,
        seed: Tensor,
        mut defer: impl FnMut(Vec<Option<usize>>, Deferred),
    ) {
        // On one thread a job would only wait for the end of the sweep, keeping what it reads;
        // while the op profiler records, each op's time must be its own.
        let allow_later = defers_leaf_gradients()
            && rayon::current_num_threads() > 1
            && !tensor::profile::enabled();
        // How many times each leaf is an op's input, a parameter counted over all the nodes
        // that bind it (each `Graph::param` call makes one): only a leaf used once may wait,
        // so that no other gradient is ever added to it in this sweep, before or after its
        // job's (the sums then have the same bits whether the job ran or not).
        let mut node_uses = vec![0usize; output + 1];
        let mut param_uses: HashMap<usize, usize> = HashMap::new();
        if allow_later {
            for node in &self.nodes[..=output] {
                if let NodeKind::Op { inputs, .. } = &node.kind {
                    for &i in inputs.iter().flatten() {
                        match &self.nodes[i].kind {
                            NodeKind::Param(p) => *param_uses.entry(p.id()).or_default() += 1,
                            _ => node_uses[i] += 1,
                        }
                    }
                }
            }
        }
        let used_once = |i: usize, kind: &NodeKind| match kind {
            NodeKind::Param(p) => param_uses.get(&p.id()) == Some(&1),
            NodeKind::Leaf { .. } => node_uses[i] == 1,
            NodeKind::Op { .. } => false,
        };
        let mut grads: Vec<Option<Tensor>> = vec![None; output + 1];
        grads[output] = Some(seed);
        for id in (0..=output).rev() {
            let Some(grad) = grads[id].take() else {
                continue;
            };
            let (before, rest) = self.nodes.split_at_mut(id);
            let node = &mut rest[0];
            assert_eq!(
                grad.shape(),
                node.shape.as_slice(),
                "backward: gradient of shape {:?} reached a node of shape {:?}",
                grad.shape(),
                node.shape
            );
            match &mut node.kind {
                NodeKind::Leaf { grad: slot } => accumulate(slot, grad),
                NodeKind::Param(param) => param.accumulate_grad(grad),
                NodeKind::Op { rule, inputs } => {
                    let rule = rule.take().unwrap_or_else(|| {
                        panic!("backward: this graph was already differentiated through (its saved tensors are freed); build it again")
                    });
                    let needs: Vec<bool> = inputs.iter().map(Option::is_some).collect();
                    // The gradients the inputs already have from other paths (each node's
                    // once), for the rule to add to.
                    let acc: Vec<Option<Tensor>> = (0..inputs.len())
                        .map(|k| match inputs[k] {
                            Some(i) if !inputs[..k].contains(&Some(i)) => grads[i].take(),
                            _ => None,
                        })
                        .collect();
                    // Leaves used by this rule alone, once, may wait.
                    let later: Vec<bool> = inputs
                        .iter()
                        .map(|&i| i.is_some_and(|i| allow_later && used_once(i, &before[i].kind)))
                        .collect();
                    let (input_grads, job) = rule.backward_split(&grad, &needs, acc, &later);
                    assert_eq!(
                        input_grads.len(),
                        inputs.len(),
                        "backward of {}: returned {} gradients for {} inputs",
                        rule.name(),
                        input_grads.len(),
                        inputs.len()
                    );
                    let inputs = std::mem::take(inputs);
                    if let Some(job) = job {
                        let (name, n) = (rule.name(), inputs.len());
                        // The inputs the job may give a gradient: those that may wait and got
                        // none now.
                        let open: Vec<bool> = later
                            .iter()
                            .zip(&input_grads)
                            .map(|(&l, g)| l && g.is_none())
                            .collect();
                        let leaves: Vec<Option<usize>> = inputs
                            .iter()
                            .zip(&later)
                            .map(|(&i, &l)| i.filter(|_| l))
                            .collect();
                        defer(
                            leaves,
                            Box::new(move || {
                                let grads = job();
                                assert_eq!(
                                    grads.len(),
                                    n,
                                    "backward of {name}: its deferred job returned {} gradients for {n} inputs",
                                    grads.len()
                                );
                                for (k, g) in grads.iter().enumerate() {
                                    assert!(
                                        g.is_none() || open[k],
                                        "backward of {name}: its deferred job gave input {k} a gradient, which it may not defer or already got"
                                    );
                                }
                                grads
                            }),
                        );
                    }
                    for (input, g) in inputs.into_iter().zip(input_grads) {
                        if let (Some(input), Some(g)) = (input, g) {
                            accumulate(&mut grads[input], g);
                        }
                    }
                }
            }
        }
    }
}
