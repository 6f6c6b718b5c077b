#!/usr/bin/env python3
"""Reference outputs of diffusers' UNet2DModel for ddpm/tests/diffusers_unet.rs.

For each configuration this builds diffusers.UNet2DModel, overwrites every parameter with a
deterministic formula (written identically in the Rust test, so the weights need not be stored),
runs one forward pass in float32 on CPU, and writes to ddpm/tests/data/<name>/:

  config.json        diffusers' own config file for the model (save_config)
  reference.safetensors
                     `input` [N, C, H, W], `timesteps` [N] and `output` [N, C_out, H, W]
  param_shapes.json  {name: shape} for every parameter, in diffusers' order

and for `ddpm_small` gradients.safetensors: the gradients of L = mean(output^2) with respect to
the input (`input`) and to a selection of parameters (under their names).

It also writes param_shapes.json (no weights) for google/ddpm-cifar10-32's configuration.

Usage:  python ddpm/scripts/make_diffusers_reference.py [--weights-dir DIR]
        (needs torch, diffusers, safetensors, numpy; --weights-dir also saves each model with
        save_pretrained, to try UNet::load_diffusers on a real diffusers file.)

The weight formula, for the parameter at position j of the names sorted as byte strings and its
flat (row-major) element index i, with P = 1000003:

  u = (((i * i) mod P) * 7919 + i * 104729 + j * 15485863) mod P / P        in [0, 1)
  w = (2u - 1) / sqrt(fan_in)   for tensors of rank >= 2 (fan_in = numel / shape[0])
  w = 1 + 0.2 (2u - 1)          for rank-1 tensors named *.weight (norm scales)
  w = 0.2 (2u - 1)              for rank-1 tensors named *.bias

computed in float64 and rounded to float32.
"""

import argparse
import json
import math
import os

import numpy as np
import torch
from diffusers import UNet2DModel
from safetensors.torch import save_file

P = 1000003

CONFIGS = {
    # The `bench` preset: every field not listed is at UNet2DModel's defaults.
    "bench": dict(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(64, 128, 128),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=32,
    ),
    # The other code paths: DDPM's embedding (flip False, shift 1), eps 1e-6, TF "SAME"
    # downsampling, one attention head of all channels, attention at two levels and in the
    # middle, a mid-block scale factor, centred input, a learned-variance-sized output.
    "ddpm_small": dict(
        sample_size=16,
        in_channels=3,
        out_channels=6,
        center_input_sample=True,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        norm_eps=1e-6,
        attention_head_dim=None,
        flip_sin_to_cos=False,
        freq_shift=1,
        downsample_padding=0,
        mid_block_scale_factor=math.sqrt(2.0),
    ),
    # Rarer options: attention at full resolution with 8-channel heads, a separate group count
    # for the mid attention, a time-embedding width of its own, a non-square input.
    "variants": dict(
        sample_size=16,
        in_channels=2,
        out_channels=2,
        block_out_channels=(16, 32),
        layers_per_block=2,
        down_block_types=("AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D"),
        norm_num_groups=8,
        attn_norm_num_groups=4,
        time_embedding_dim=48,
        norm_eps=1e-5,
    ),
    # No mid-block attention.
    "no_mid_attention": dict(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        add_attention=False,
    ),
}

CIFAR10 = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 256, 256),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=None,
    flip_sin_to_cos=False,
    freq_shift=1,
    norm_eps=1e-6,
    downsample_padding=0,
)

TIMESTEPS = {
    "bench": [10.0, 999.0],
    "ddpm_small": [0.0, 537.0],
    "variants": [250.0, 3.0],
    "no_mid_attention": [77.0, 640.0],
}
# Input height and width (the sample size unless listed).
INPUT_SIZE = {"variants": (16, 24)}

GRADIENT_PARAMS = [
    "conv_in.weight",
    "time_embedding.linear_1.weight",
    "down_blocks.1.attentions.0.to_q.weight",
    "down_blocks.1.downsamplers.0.conv.bias",
    "mid_block.attentions.0.to_v.bias",
    "mid_block.resnets.1.time_emb_proj.weight",
    "up_blocks.0.resnets.0.conv_shortcut.weight",
    "up_blocks.1.upsamplers.0.conv.bias",
    "up_blocks.1.attentions.1.group_norm.weight",
    "conv_norm_out.weight",
    "conv_out.weight",
]


def gradients(model, x, t):
    x = x.clone().requires_grad_(True)
    model.zero_grad()
    y = model(x, t).sample
    (y * y).mean().backward()
    params = dict(model.named_parameters())
    grads = {"input": x.grad}
    grads.update({n: params[n].grad for n in GRADIENT_PARAMS})
    return {n: g.detach().contiguous() for n, g in grads.items()}


def formula(name, shape, j):
    numel = int(np.prod(shape))
    i = np.arange(numel, dtype=np.uint64)
    p = np.uint64(P)
    h = ((i * i) % p) * np.uint64(7919) + i * np.uint64(104729) + np.uint64(j * 15485863)
    u = (h % p).astype(np.float64) / float(P)
    s = 2.0 * u - 1.0
    if len(shape) >= 2:
        w = s / math.sqrt(numel // shape[0])
    elif name.endswith(".weight"):
        w = 1.0 + 0.2 * s
    else:
        w = 0.2 * s
    return torch.from_numpy(w.astype(np.float32).reshape(shape))


def fill(model):
    state = model.state_dict()
    names = sorted(state.keys(), key=lambda n: n.encode())
    with torch.no_grad():
        for j, name in enumerate(names):
            state[name].copy_(formula(name, tuple(state[name].shape), j))


def shapes(model):
    return {n: list(p.shape) for n, p in model.named_parameters()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights-dir", help="also save_pretrained each model here")
    args = parser.parse_args()
    torch.manual_seed(0)
    data = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data")

    for name, config in CONFIGS.items():
        model = UNet2DModel(**config).eval()
        fill(model)
        size = INPUT_SIZE.get(name, (config["sample_size"], config["sample_size"]))
        gen = torch.Generator().manual_seed(1234)
        x = torch.randn(2, config["in_channels"], *size, generator=gen)
        if config.get("center_input_sample"):
            x = torch.rand(2, config["in_channels"], *size, generator=gen)
        t = torch.tensor(TIMESTEPS[name], dtype=torch.float32)
        with torch.no_grad():
            y = model(x, t).sample
        out = os.path.join(data, name)
        os.makedirs(out, exist_ok=True)
        model.save_config(out)
        save_file({"input": x, "timesteps": t, "output": y.contiguous()},
                  os.path.join(out, "reference.safetensors"))
        with open(os.path.join(out, "param_shapes.json"), "w") as f:
            json.dump(shapes(model), f, indent=0)
        if name == "ddpm_small":
            save_file(gradients(model, x, t), os.path.join(out, "gradients.safetensors"))
        count = sum(p.numel() for p in model.parameters())
        print(f"{name}: {count:,} parameters, output max |y| = {y.abs().max().item():.4f}")
        if args.weights_dir:
            model.save_pretrained(os.path.join(args.weights_dir, name))

    model = UNet2DModel(**CIFAR10)
    out = os.path.join(data, "ddpm_cifar10")
    os.makedirs(out, exist_ok=True)
    model.save_config(out)
    with open(os.path.join(out, "param_shapes.json"), "w") as f:
        json.dump(shapes(model), f, indent=0)
    print(f"ddpm_cifar10: {sum(p.numel() for p in model.parameters()):,} parameters")


if __name__ == "__main__":
    main()
