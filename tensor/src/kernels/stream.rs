//! Memory streaming probe: what `threads` threads together read and write per second when
//! each sweeps its own buffer far larger than the caches, measured in-process.
//!
//! It is the memory-side companion of [`super::peak`]: where the FMA probe asks whether the
//! cores are whole, this one asks how much of the memory system a thread gets. On a shared
//! machine two threads often do not get twice one thread's bandwidth (the other tenants'
//! traffic takes the rest), and then the passes of a step that stream from memory cannot
//! scale either (see `ddpm bench unet --scaling`).

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Bytes each thread sweeps: 64 MiB, several times the last-level cache.
pub const STREAM_BYTES: usize = 64 << 20;

/// Buffers for [`StreamProbe::gbps`], one per thread, allocated and touched once so that a
/// benchmark can probe between its own timed runs without paying for fresh pages each time.
pub struct StreamProbe {
    buffers: Vec<Vec<f32>>,
}

impl StreamProbe {
    /// Buffers of `bytes` each (at least 4 KiB) for up to `threads` threads, written once.
    pub fn new(threads: usize, bytes: usize) -> StreamProbe {
        let len = (bytes / 4).max(1024);
        StreamProbe {
            // Written once here: fresh zeroed pages are only mapped on their first write.
            buffers: (0..threads.max(1)).map(|_| vec![1.0f32; len]).collect(),
        }
    }

    /// Aggregate GB/s (1e9 bytes, reads plus writes) of `threads` threads (at most the number
    /// the probe was built for) started together, each sweeping its own buffer (adding one to
    /// every value: one read and one write per value) for at least `run`, whole sweeps only.
    /// The rate is the bytes of all threads over the slowest thread's time.
    pub fn gbps(&mut self, threads: usize, run: Duration) -> f64 {
        let threads = threads.clamp(1, self.buffers.len());
        let barrier = Barrier::new(threads);
        let per_thread: Vec<(f64, Duration)> = std::thread::scope(|s| {
            let handles: Vec<_> = self.buffers[..threads]
                .iter_mut()
                .map(|buf| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        barrier.wait();
                        let start = Instant::now();
                        let mut moved = 0.0;
                        loop {
                            sweep(buf);
                            moved += (8 * buf.len()) as f64;
                            if start.elapsed() >= run {
                                return (moved, start.elapsed());
                            }
                        }
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let moved: f64 = per_thread.iter().map(|r| r.0).sum();
        let secs = per_thread.iter().map(|r| r.1).max().unwrap().as_secs_f64();
        moved / secs / 1e9
    }
}

/// One read-modify-write pass over `buf` (vectorised by the compiler).
fn sweep(buf: &mut [f32]) {
    for x in black_box(&mut *buf).iter_mut() {
        *x += 1.0;
    }
    black_box(buf);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_reports_a_positive_finite_rate() {
        for threads in [1, 2] {
            let rate = StreamProbe::new(2, 1 << 20).gbps(threads, Duration::from_millis(5));
            assert!(rate.is_finite() && rate > 0.0, "{threads} threads: {rate}");
        }
    }
}
