"""PyTorch eager baseline for `ddpm bench unet`: the same model (diffusers' UNet2DModel with the
`bench` preset's configuration), the same batch, the same step (forward, MSE loss, backward,
AdamW) and the same no-grad forward, timed the same way (one warm-up, then the median of at
least 5 runs and at least 0.6 s), with the process's peak resident memory.

    python scripts/pytorch_bench_unet.py --threads 1 [--batch 16] [--json]

Needs torch and diffusers (pip install torch diffusers). The FLOPs reported are the engine's
count for this model (conv and matrix products, 3x for training), passed in with --gflop, so
that the two programs' GFLOP/s compare directly.
"""

import argparse
import json
import resource
import statistics
import time

import torch
from diffusers import UNet2DModel


def median_seconds(f):
    f()
    samples = []
    start = time.perf_counter()
    while len(samples) < 5 or (time.perf_counter() - start < 0.6 and len(samples) < 200):
        t = time.perf_counter()
        f()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--gflop", type=float, default=50.80, help="forward GFLOP (engine count)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = UNet2DModel(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(64, 128, 128),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    )
    params = sum(p.numel() for p in model.parameters())
    x = torch.randn(args.batch, 3, 32, 32)
    target = torch.randn(args.batch, 3, 32, 32)
    t = torch.randint(0, 1000, (args.batch,))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def sample_step():
        with torch.no_grad():
            model(x, t).sample

    def train_step():
        out = model(x, t).sample
        loss = torch.nn.functional.mse_loss(out, target)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()

    sample_s = median_seconds(sample_step)
    train_s = median_seconds(train_step)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    for what, seconds, gflop in [
        ("train_step", train_s, 3 * args.gflop),
        ("sample_step", sample_s, args.gflop),
    ]:
        row = {
            "bench": "pytorch_unet",
            "step": what,
            "torch": torch.__version__,
            "batch": args.batch,
            "threads": args.threads,
            "parameters": params,
            "ms": seconds * 1e3,
            "gflops": gflop / seconds,
            "peak_rss_bytes": rss,
        }
        if args.json:
            print(json.dumps(row))
        else:
            print(
                f"pytorch {what:<11} batch={args.batch} threads={args.threads} "
                f"{seconds * 1e3:9.1f} ms {gflop / seconds:6.1f} GFLOP/s  peak RSS {rss / 2**20:.0f} MiB"
            )


if __name__ == "__main__":
    main()
