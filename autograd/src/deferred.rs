//! Gradients computed off the backward sweep's path.
//!
//! The sweep is a chain: each rule needs the gradient of its output, which the rules before it
//! in the sweep computed. A leaf's gradient (a parameter's) is needed by no rule, only by the
//! optimiser after the sweep. A rule may therefore hand back the gradients of its leaf inputs
//! as a job ([`Deferred`]) instead of computing them at once. The tape spawns the job into a
//! rayon scope that spans the sweep: a thread with nothing to do on the chain (a small op's
//! serial steps, the last tasks of a parallel op, a worker that wakes late) picks it up, and
//! so may the chain's own thread while it waits inside a parallel op. Once the sweep is done
//! the tape adds the jobs' gradients to the leaves in the order the jobs were made.
//!
//! Only a leaf that is the input of one op, once, may wait (a parameter counted over every
//! node that binds it to the graph): no other gradient is then added to it in this sweep, so it gets `earlier + job's` (its gradient from earlier sweeps, if
//! any, plus the job's) with the bits the sweep would give. A job computes exactly what the
//! rule would have computed, so the gradients have the same bits either way and for any
//! number of threads. A job keeps the tensors it reads (a convolution's input and output
//! gradient) until it has run. If a job panics, the panic is raised when the sweep ends, after
//! the other gradients were added (as when a rule panics midway).
//!
//! Nothing is deferred on one thread (a job could only run at the end of the sweep, and what
//! it reads would be kept until then) or while the op profiler records
//! ([`tensor::profile`]), whose entries must each be one op's own time.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

use tensor::Tensor;

/// The gradients a rule hands back for later: run on any thread, they return one entry per
/// input of the rule, in input order (`None` for the inputs the job does not give).
pub type Deferred = Box<dyn FnOnce() -> Vec<Option<Tensor>> + Send>;

static DEFER: AtomicBool = AtomicBool::new(true);

/// Lets rules defer their leaf inputs' gradients (on by default) or not; returns the previous
/// setting. Process-wide, for benchmarks that compare the two and for tests.
pub fn defer_leaf_gradients(allowed: bool) -> bool {
    DEFER.swap(allowed, Ordering::Relaxed)
}

/// True unless [`defer_leaf_gradients`] turned deferring off.
pub fn defers_leaf_gradients() -> bool {
    DEFER.load(Ordering::Relaxed)
}

thread_local! {
    /// Jobs deferred so far by the backward sweeps that ran on this thread.
    static JOBS: Cell<usize> = const { Cell::new(0) };
}

/// Counts one job deferred by a sweep on this thread.
pub(crate) fn count_job() {
    JOBS.with(|j| j.set(j.get() + 1));
}

/// How many jobs the backward sweeps that ran on this thread have deferred so far (for
/// benchmarks and tests: the difference over a step is that step's count).
pub fn deferred_jobs() -> usize {
    JOBS.with(Cell::get)
}

/// Serialises the tests that switch deferring (process-wide) or count on it being on.
#[cfg(test)]
pub(crate) static TEST_SWITCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(test)]
mod tests {

    use tensor::Tensor;

    use super::*;
    use crate::ops::conv::{conv2d, conv2d_add, conv2d_parts, conv2d_upsampled};
    use crate::ops::norm::group_norm_silu;
    use crate::{Graph, Param};

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        Tensor::randn(shape, seed, 0)
    }

    /// The bits of the gradients of every parameter and of the input of a small network that
    /// uses each kind of convolution (Winograd-sized 3x3 with a bias, one with a shift and a
    /// residual, a 1x1 over channel parts, one reading an upsampling), a weight used by two
    /// convolutions, a weight used by a convolution and another op, a weight computed by an
    /// op, and a parameter bound to the graph twice; after two backward passes, so that the second adds to the parameters' first
    /// gradients. On `threads` threads with deferring as `defer`; also how many jobs the
    /// sweeps deferred.
    fn gradients(threads: usize, defer: bool) -> (Vec<Vec<u32>>, usize) {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let before = defer_leaf_gradients(defer);
            let params: Vec<Param> = [
                (vec![16, 16, 3, 3], 0.1),
                (vec![16], 1.0),
                (vec![16, 16, 3, 3], 0.1),
                (vec![16], 1.0),
                (vec![8, 32, 1, 1], 0.2),
                (vec![8], 1.0),
                (vec![4, 8, 3, 3], 0.2),
                (vec![16, 16, 3, 3], 0.1),
                (vec![16, 16, 3, 3], 0.1),
            ]
            .into_iter()
            .enumerate()
            .map(|(i, (shape, scale))| Param::new(randn(&shape, 10 + i as u64).mul_scalar(scale)))
            .collect();
            let jobs = deferred_jobs();
            for _ in 0..2 {
                let g = Graph::new();
                let p: Vec<_> = params.iter().map(|p| g.param(p)).collect();
                let x = g.leaf(randn(&[2, 16, 8, 8], 1));
                let shift = g.leaf(randn(&[2, 16, 1, 1], 2));
                let h = conv2d(&x, &p[0], Some(&p[1]), 1, 1);
                let a = group_norm_silu(&h, 4, None, None, 1e-5);
                let h = conv2d_add(&a, &p[2], Some(&p[3]), 1, 1, Some(&shift), Some(&h));
                let h = conv2d(&h, &p[2], None, 1, 1);
                // A weight computed by an op, and a weight also used by another op.
                let h = conv2d(&h, &p[7].mul(&p[7]), None, 1, 1);
                let h = conv2d(&h, &p[0], None, 1, 1).add(&p[1].reshape(&[1, 16, 1, 1]));
                // A parameter bound twice (two nodes, each used once), the bindings used in
                // the reverse of their order (so a sweep meets them in another order than
                // their uses).
                let (first, second) = (g.param(&params[8]), g.param(&params[8]));
                let h = conv2d(&h, &second, None, 1, 1);
                let h = conv2d(&h, &first, None, 1, 1);
                let y = conv2d_parts(&[&h, &x], &p[4], Some(&p[5]));
                let up = conv2d_upsampled(&y, &p[6], None, 1, 1);
                up.mul(&up).sum_all().backward();
            }
            let jobs = deferred_jobs() - jobs;
            defer_leaf_gradients(before);
            let bits = |t: Tensor| t.data().iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
            let grads = params
                .iter()
                .map(|p| bits(p.grad().expect("a gradient")))
                .collect();
            (grads, jobs)
        })
    }

    #[test]
    fn deferred_gradients_have_the_bits_of_the_sweep() {
        let _switch = TEST_SWITCH.lock().unwrap_or_else(|e| e.into_inner());
        let (one, jobs_one) = gradients(1, true);
        let (kept, jobs_kept) = gradients(2, false);
        let (deferred, jobs) = gradients(2, true);
        // Nothing is deferred on one thread or when switched off. On two threads, per pass,
        // the weight gradients of the 1x1 and the upsampling convolution are deferred; the
        // weights used twice (p[0] with its bias p[1] also added elsewhere, p[2], and p[8]
        // through two bindings) or computed by an op (p[7] squared) are not.
        assert_eq!((jobs_one, jobs_kept, jobs), (0, 0, 4));
        assert_eq!(one, kept);
        assert_eq!(kept, deferred);
    }

    #[test]
    fn nothing_is_deferred_while_profiling() {
        let _switch = TEST_SWITCH.lock().unwrap_or_else(|e| e.into_inner());
        let before = tensor::profile::enabled();
        tensor::profile::enable(true);
        let (_, jobs) = gradients(2, true);
        tensor::profile::enable(before);
        let _ = tensor::profile::take();
        assert_eq!(jobs, 0);
    }
}
