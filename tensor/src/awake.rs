//! Keeping the thread pool's workers awake through a step made of many short parallel ops.
//!
//! A rayon worker that finds no work yields a few dozen times and then sleeps; the next
//! parallel op has to wake it, and on a virtual machine a sleeping CPU may be descheduled by
//! the host, so the wake-up can take tens of microseconds, or much longer when the host is
//! busy. A training step of this UNet has a few thousand parallel regions, many of them short
//! and separated by serial glue (the tape, small products, reductions), so its workers fell
//! asleep and were woken again and again. [`keep_awake`] gives every other worker of the
//! current pool a job that keeps looking for work (and runs whatever it finds) until the
//! returned guard is dropped: the workers stay on their CPUs for the whole step.
//!
//! On the machine of the thirteenth session (two vCPUs of an Intel Xeon under KVM, whose
//! guest halt polling is off, so an idle vCPU halts at once), `ddpm bench unet
//! --compare-awake` measured steps without the guard over steps with it, interleaved in one
//! process on two threads: 1.3-2.3% on a training step and 3-6% on a sampling step. On the
//! AMD machine of earlier sessions it made no difference beyond the noise, so it was tried
//! and taken out twice (see docs/performance-changes.md).
//!
//! Only scheduling changes: no result here depends on which thread runs a piece of work (nor
//! on how an op splits its work among threads).
//!
//! ```
//! let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
//! pool.install(|| {
//!     let _awake = tensor::awake::keep_awake();
//!     // ... the parallel ops of one step ...
//! });
//! ```

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a keeper job spins without finding work before it returns anyway. A worker can
/// pick the job up while it waits inside a parallel op of its own (rayon runs pending jobs
/// during such waits), and the op under it cannot go on until the keeper returns: the limit
/// turns what would be a deadlock into a pause. Gaps between the parallel ops of a step are
/// far shorter.
const IDLE_LIMIT: Duration = Duration::from_millis(20);

/// How long a keeper job runs at most, work or none. A keeper that started inside another
/// op's wait holds that op until it returns, and while it keeps finding work (another
/// holder's step) the idle limit never comes: this bounds the pause. A step of the UNets here
/// takes well under a second. A keeper that returns, for either limit, is not started again
/// in that step; the rest of the step runs as without the guard.
const MAX_LIFETIME: Duration = Duration::from_secs(5);

/// Whether [`keep_awake`] starts keeper jobs (see [`keep_workers_awake`]).
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns [`keep_awake`] on or off for the whole process (on by default); returns the previous
/// setting. Off, the guard does nothing, so the two can be compared step by step in one
/// process (`ddpm bench unet --compare-awake`).
pub fn keep_workers_awake(on: bool) -> bool {
    ENABLED.swap(on, Ordering::AcqRel)
}

/// Workers inside a [`keep_awake`] job right now (all pools).
static KEEPING_AWAKE: AtomicUsize = AtomicUsize::new(0);
/// Keeper jobs started so far (all pools).
static KEEPERS_STARTED: AtomicUsize = AtomicUsize::new(0);

/// Keeper jobs sent so far (all pools).
static KEEPERS_SENT: AtomicUsize = AtomicUsize::new(0);

/// Keeper jobs sent so far by every [`keep_awake`] guard of the process (one to each worker
/// but the caller, counted when the guard is taken), so that a benchmark can show what the
/// guard did.
pub fn keepers_sent() -> usize {
    KEEPERS_SENT.load(Ordering::Acquire)
}

/// Keeps the other workers of the current rayon pool busy until dropped (see
/// [`keep_awake`]).
#[must_use = "the workers stay awake only while the guard lives"]
pub struct Awake {
    stop: Option<Arc<AtomicBool>>,
}

impl Drop for Awake {
    fn drop(&mut self) {
        if let Some(stop) = &self.stop {
            stop.store(true, Ordering::Release);
        }
    }
}

/// Starts, on every worker of the current rayon pool other than the calling thread, a job
/// that runs pending work as it appears (stealing it like an idle worker would) and spins in
/// between, until the returned guard is dropped. On a pool of one thread, or when turned off
/// by [`keep_workers_awake`], it does nothing; nor when called from a thread that is not one
/// of a pool's workers (outside `ThreadPool::install`): such a thread sleeps through every
/// parallel op it starts anyway, and its serial work needs a CPU the keepers would spin on.
///
/// Keep the guard for one step (a few hundred milliseconds), not across waits for input: the
/// workers spin for as long as it lives (a keeper that finds no work for 20 ms returns early,
/// and none runs longer than 5 s). Take it inside the pool, at the start of a step, with one
/// step at a time on the pool: a worker busy with other work may run its keeper inside a
/// wait of that work, which then pauses until the keeper returns.
pub fn keep_awake() -> Awake {
    let caller = rayon::current_thread_index();
    if caller.is_none() || rayon::current_num_threads() < 2 || !ENABLED.load(Ordering::Acquire) {
        return Awake { stop: None };
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    KEEPERS_SENT.fetch_add(rayon::current_num_threads() - 1, Ordering::AcqRel);
    rayon::spawn_broadcast(move |ctx| {
        // The calling worker runs its copy only when it waits for work inside the step: it
        // must return at once (its step cannot finish while it spins here).
        if Some(ctx.index()) == caller {
            return;
        }
        KEEPERS_STARTED.fetch_add(1, Ordering::AcqRel);
        KEEPING_AWAKE.fetch_add(1, Ordering::AcqRel);
        let mut idle_since: Option<Instant> = None;
        let started = Instant::now();
        while !flag.load(Ordering::Acquire) && started.elapsed() < MAX_LIFETIME {
            match rayon::yield_now() {
                Some(rayon::Yield::Executed) => idle_since = None,
                Some(rayon::Yield::Idle) => {
                    let since = *idle_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > IDLE_LIMIT {
                        break;
                    }
                    std::hint::spin_loop();
                }
                None => break,
            }
        }
        KEEPING_AWAKE.fetch_sub(1, Ordering::AcqRel);
    });
    Awake { stop: Some(stop) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;
    use std::sync::mpsc::channel;
    use std::sync::Mutex;

    /// The keeper counters are process-wide: the tests that watch them run one at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    /// Waits up to a second for no worker to be inside a keeper job.
    fn all_let_go() -> bool {
        let start = Instant::now();
        while KEEPING_AWAKE.load(Ordering::Acquire) != 0 {
            if start.elapsed() > Duration::from_secs(1) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// Parallel work under the guard gives the same result as without it, whether the guard
    /// is taken inside the pool or held across a separate `install`; the other worker does
    /// take the keeper job, and every keeper returns once the guard is dropped.
    #[test]
    fn work_under_the_guard_completes_and_the_workers_let_go() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let work = || {
            (0..1_000_000u64)
                .into_par_iter()
                .map(|i| i * i % 7)
                .sum::<u64>()
        };
        let want: u64 = (0..1_000_000u64).map(|i| i * i % 7).sum();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for _ in 0..20 {
            let got = pool.install(|| {
                let _awake = keep_awake();
                work()
            });
            assert_eq!(got, want);
            assert!(
                all_let_go(),
                "a worker kept spinning after the guard was dropped"
            );
        }
        let started = KEEPERS_STARTED.load(Ordering::Acquire);
        let awake = pool.install(keep_awake);
        assert_eq!(pool.install(work), want);
        let start = Instant::now();
        while KEEPERS_STARTED.load(Ordering::Acquire) == started {
            assert!(
                start.elapsed() < Duration::from_secs(1),
                "no worker took the keeper job"
            );
            std::hint::spin_loop();
        }
        drop(awake);
        assert!(
            all_let_go(),
            "a worker kept spinning after the guard was dropped"
        );
    }

    /// On one thread there is no other worker to keep: the guard does nothing.
    #[test]
    fn one_thread_pool_starts_no_keeper() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let awake = pool.install(keep_awake);
        assert!(awake.stop.is_none());
    }

    /// From a thread outside the pool (not inside `install`), the guard starts no keeper.
    #[test]
    fn outside_a_pool_the_guard_starts_no_keeper() {
        assert!(rayon::current_thread_index().is_none());
        let awake = keep_awake();
        assert!(awake.stop.is_none());
    }

    /// Turned off, the guard starts no keeper on two threads either; turned on again, it does.
    #[test]
    fn turned_off_the_guard_starts_no_keeper() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let before = keep_workers_awake(false);
        let off = pool.install(keep_awake);
        assert!(off.stop.is_none());
        keep_workers_awake(true);
        let on = pool.install(keep_awake);
        assert!(on.stop.is_some());
        drop(on);
        assert!(all_let_go());
        keep_workers_awake(before);
    }

    /// Guards taken while the pool is busy with someone else's parallel work (a worker may
    /// then run the keeper inside a wait of its own): every piece of work still finishes.
    #[test]
    fn guards_taken_while_the_pool_is_busy_do_not_deadlock() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let pool = Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .unwrap(),
        );
        let want: u64 = (0..200_000u64).map(|i| i % 13).sum();
        let (done, finished) = channel();
        for _ in 0..3 {
            let (pool, done) = (Arc::clone(&pool), done.clone());
            std::thread::spawn(move || {
                for _ in 0..30 {
                    let _awake = pool.install(keep_awake);
                    let got: u64 = pool.install(|| {
                        (0..200_000u32)
                            .into_par_iter()
                            .with_max_len(1000)
                            .map(u64::from)
                            .map(|i| i % 13)
                            .sum()
                    });
                    assert_eq!(got, want);
                }
                done.send(()).unwrap();
            });
        }
        for _ in 0..3 {
            finished
                .recv_timeout(Duration::from_secs(60))
                .expect("guarded work did not finish (deadlock)");
        }
    }
}
