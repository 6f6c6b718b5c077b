//! `ddpm bench unet`: a UNet training step (forward, backward, AdamW) and a sampling step
//! (no-grad forward), as milliseconds, effective GFLOP/s and fraction of the FMA peak.
//!
//! The work counted is that of the convolutions and matrix products computed directly: the
//! FLOPs of one forward pass `F`, measured by the engine's counter during a no-grad forward,
//! and `3F` for a training step (forward, backward-data and backward-weight), so a faster
//! algorithm shows up as more than 1.0 of peak.

use autograd::nn::{Ctx, ParamStore};
use autograd::ops::loss::mse_loss;
use autograd::optim::{Adam, AdamConfig, Optimizer};
use autograd::{no_grad, Var};
use clap::Args;
use ddpm::unet::{UNet, UNetConfig};
use serde_json::Value;
use tensor::ops::flops;
use tensor::rng::Rng;

use super::compare::Comparison;
use super::timing::{median_seconds, peak};
use super::Report;

/// The model and batch.
#[derive(Args, Clone)]
pub struct UnetArgs {
    /// The UNet preset (`bench` is diffusers' UNet2DModel with block_out_channels (64,128,128)).
    #[arg(long, default_value = "bench")]
    pub(super) preset: String,
    /// Images per step.
    #[arg(long, default_value_t = 16)]
    pub(super) batch: usize,
    /// Also print where a step's time goes, by op and by op and shape (with `--scaling`: the
    /// speed-up of each op).
    #[arg(long)]
    pub(super) profile: bool,
    /// Instead, time training steps on one thread and on `--threads` alternately in one process
    /// (two copies of the model, each on its own pool), and report the speed-up pair by pair.
    #[arg(long)]
    scaling: bool,
    /// Pairs of steps for `--scaling` and the `--compare-*` options.
    #[arg(long, default_value_t = 10)]
    pub(super) pairs: usize,
    /// Instead, time steps with the up path reading its skip concatenations and upsampled
    /// images in place against steps with them formed, alternately in one process, and report
    /// the ratio pair by pair.
    #[arg(long, conflicts_with = "scaling")]
    compare_in_place: bool,
    /// Instead, time training steps with the convolutions' weight gradients deferred off the
    /// backward sweep's path against steps with every gradient computed in the sweep,
    /// alternately in one process, and report the ratio pair by pair.
    #[arg(long, conflicts_with_all = ["scaling", "compare_in_place"])]
    compare_deferred: bool,
    /// Instead, time steps with the pool's workers kept awake through each step against steps
    /// without (`tensor::awake`), alternately in one process, and report the ratio pair by
    /// pair.
    #[arg(long, conflicts_with_all = ["scaling", "compare_in_place", "compare_deferred"])]
    compare_awake: bool,
}

/// The benchmark's model with its inputs and optimiser.
pub(super) struct Workload {
    unet: UNet,
    store: ParamStore,
    optimizer: Adam,
    x: tensor::Tensor,
    target: tensor::Tensor,
    timesteps: Vec<f32>,
    step: u64,
}

impl Workload {
    /// The preset's model and a batch of inputs, all from seed 0 (the same on every call).
    pub(super) fn new(args: &UnetArgs) -> Result<Workload, String> {
        if args.batch == 0 {
            return Err("--batch must be at least 1".into());
        }
        let config = UNetConfig::preset(&args.preset).map_err(|e| e.to_string())?;
        let store = ParamStore::new();
        let mut rng = Rng::new(0, 0);
        let unet = UNet::new(config.clone(), &store, &mut rng);
        let size = config.sample_size.unwrap_or(32);
        let x = rng.normal(&[args.batch, config.in_channels, size, size]);
        let target = rng.normal(&[args.batch, config.out_channels, size, size]);
        let timesteps: Vec<f32> = rng
            .below_many(args.batch, 1000)
            .into_iter()
            .map(|t| t as f32)
            .collect();
        let optimizer = Adam::new(store.params(), AdamConfig::adamw());
        Ok(Workload {
            unet,
            store,
            optimizer,
            x,
            target,
            timesteps,
            step: 0,
        })
    }

    /// A sampling step: one no-grad forward (with the workers kept awake, as the sampler
    /// does).
    pub(super) fn forward(&self) {
        let _awake = tensor::awake::keep_awake();
        no_grad(|| {
            self.unet.forward(
                &mut Ctx::eval(),
                &Var::constant(self.x.clone()),
                &self.timesteps,
            )
        });
    }

    /// A training step: forward, MSE loss, backward, AdamW (with the workers kept awake, as
    /// the trainer does).
    pub(super) fn train_step(&mut self) {
        let _awake = tensor::awake::keep_awake();
        let mut ctx = Ctx::train(Rng::new(1, self.step));
        self.step += 1;
        let output = self
            .unet
            .forward(&mut ctx, &Var::constant(self.x.clone()), &self.timesteps);
        let loss = mse_loss(&output, &Var::constant(self.target.clone()));
        self.store.zero_grad();
        loss.backward();
        self.optimizer.step(1e-4);
    }
}

/// The process's peak resident memory in bytes (VmHWM), where /proc has it.
fn peak_resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The process's minor page faults so far (field 10 of /proc/self/stat), where /proc has it.
fn minor_faults() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; fields after it follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(7)?.parse().ok()
}

/// The voluntary context switches of all the process's threads so far (a thread that blocks,
/// as an idle pool worker does when it goes to sleep, makes one), where /proc has them.
fn voluntary_switches() -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        // A thread that has just ended has no status any more.
        let Ok(status) = std::fs::read_to_string(task.ok()?.path().join("status")) else {
            continue;
        };
        let line = status
            .lines()
            .find(|l| l.starts_with("voluntary_ctxt_switches:"))?;
        total += line.split_whitespace().nth(1)?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// Minor page faults and voluntary context switches per call of `f` over `reps` calls (a
/// steady-state step that reuses memory makes almost no faults, fresh pages from the kernel
/// each cost one; each switch is a thread going to sleep, to be woken again).
fn counts_per_call(reps: u64, mut f: impl FnMut()) -> [Option<f64>; 2] {
    let before = [minor_faults(), voluntary_switches()];
    for _ in 0..reps {
        f();
    }
    let after = [minor_faults(), voluntary_switches()];
    [0, 1].map(|i| Some(after[i]?.saturating_sub(before[i]?) as f64 / reps as f64))
}

/// Measures the peak, a sampling step and a training step.
pub fn run(args: &UnetArgs, threads: usize, report: &Report) -> Result<(), String> {
    if args.scaling {
        return super::scaling::run(args, threads, report);
    }
    if args.compare_in_place {
        return super::compare::run(args, Comparison::InPlace, threads, report);
    }
    if args.compare_deferred {
        return super::compare::run(args, Comparison::Deferred, threads, report);
    }
    if args.compare_awake {
        return super::compare::run(args, Comparison::Awake, threads, report);
    }
    let mut bench = Workload::new(args)?;
    let peak_gflops = peak(threads, report);
    flops::reset();
    bench.forward();
    let forward_flops = flops::count() as f64;
    let sample_seconds = median_seconds(|| bench.forward());
    let train_seconds = median_seconds(|| bench.train_step());
    let train_counts = counts_per_call(3, || bench.train_step());
    let sample_counts = counts_per_call(3, || bench.forward());
    let rss = peak_resident_bytes();
    for (what, seconds, work, [faults, switches]) in [
        (
            "train_step",
            train_seconds,
            3.0 * forward_flops,
            train_counts,
        ),
        ("sample_step", sample_seconds, forward_flops, sample_counts),
    ] {
        let gflops = work / seconds / 1e9;
        let fraction = gflops / peak_gflops;
        report.line(
            &[
                ("bench", "unet".into()),
                ("step", what.into()),
                ("preset", args.preset.clone().into()),
                ("batch", args.batch.into()),
                ("threads", threads.into()),
                ("parameters", bench.store.num_elements().into()),
                ("ms", Value::from(seconds * 1e3)),
                ("gflop", Value::from(work / 1e9)),
                ("gflops", gflops.into()),
                ("peak_gflops", peak_gflops.into()),
                ("fraction_of_peak", fraction.into()),
                ("peak_rss_bytes", rss.map_or(Value::Null, Value::from)),
                ("page_faults_per_step", faults.map_or(Value::Null, Value::from)),
                (
                    "context_switches_per_step",
                    switches.map_or(Value::Null, Value::from),
                ),
            ],
            &format!(
                "unet {what:<11} preset={} batch={} threads={threads}  {:>9.1} ms  {:>6.2} GFLOP  {gflops:>6.1} GFLOP/s  {:>5.1}% of peak  peak RSS {}  {} page faults/step  {} sleeps/step",
                args.preset,
                args.batch,
                seconds * 1e3,
                work / 1e9,
                fraction * 100.0,
                rss.map_or("n/a".to_string(), |b| format!("{:.0} MiB", b as f64 / (1 << 20) as f64)),
                faults.map_or("n/a".to_string(), |f| format!("{f:.0}")),
                switches.map_or("n/a".to_string(), |f| format!("{f:.0}")),
            ),
        );
    }
    if args.profile {
        super::profile::report_step("train_step", threads, report, || bench.train_step());
        super::profile::report_step("sample_step", threads, report, || bench.forward());
    }
    Ok(())
}
