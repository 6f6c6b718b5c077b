//! `autograd`: reverse-mode automatic differentiation over the `tensor` crate.
//!
//! A [`Graph`] owns a tape: an arena of nodes pushed in the order ops run. Values enter it as
//! leaves ([`Graph::leaf`]) or parameters ([`Graph::param`]); each op computes its output with
//! `tensor` and records a node holding its backward rule ([`Backward`]). [`Var::backward`]
//! sweeps the tape once in reverse, calling each rule with the gradient of its output. See
//! `docs/autograd.md` for a walkthrough.

mod deferred;
pub mod gradcheck;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod param;
mod tape;
#[cfg(test)]
mod test_util;
pub mod toy_data;
mod var;

pub use deferred::{defer_leaf_gradients, deferred_jobs, defers_leaf_gradients, Deferred};
pub use param::Param;
pub use tape::Backward;
pub use var::{is_grad_enabled, no_grad, Graph, Var};
