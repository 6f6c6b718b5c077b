//! Whole-model tests: parameter counts, names, shapes, gradients, overfitting one batch, and
//! bitwise determinism across thread counts. Agreement with diffusers is in
//! `ddpm/tests/diffusers_unet.rs`.

use std::time::Instant;

use autograd::nn::{Ctx, ParamStore};
use autograd::ops::loss::mse_loss;
use autograd::optim::{Adam, AdamConfig, Optimizer};
use autograd::{no_grad, Var};
use tensor::rng::Rng;
use tensor::Tensor;

use super::{UNet, UNetConfig};

fn build(config: UNetConfig, seed: u64) -> (UNet, ParamStore) {
    let store = ParamStore::new();
    let unet = UNet::new(config, &store, &mut Rng::new(seed, 0));
    (unet, store)
}

#[test]
fn unet_preset_parameter_counts() {
    let mut counts = Vec::new();
    for name in ["tiny", "small", "bench", "ddpm-cifar10"] {
        let (_, store) = build(UNetConfig::preset(name).unwrap(), 0);
        println!("{name:>14}: {:>11} parameters", store.num_elements());
        counts.push(store.num_elements());
    }
    assert_eq!(counts[2], 6_472_195, "bench");
    assert_eq!(counts[3], 35_746_307, "ddpm-cifar10");
}

#[test]
fn unet_names_and_shapes_are_diffusers() {
    let (_, store) = build(UNetConfig::ddpm_cifar10(), 0);
    let shape = |name: &str| {
        store
            .get(name)
            .unwrap_or_else(|| panic!("no parameter `{name}`"))
            .shape()
    };
    assert_eq!(shape("conv_in.weight"), [128, 3, 3, 3]);
    assert_eq!(shape("time_embedding.linear_1.weight"), [512, 128]);
    assert_eq!(shape("down_blocks.1.attentions.0.to_q.weight"), [256, 256]);
    assert_eq!(
        shape("down_blocks.1.resnets.0.conv_shortcut.weight"),
        [256, 128, 1, 1]
    );
    assert_eq!(
        shape("down_blocks.2.downsamplers.0.conv.weight"),
        [256, 256, 3, 3]
    );
    assert_eq!(shape("mid_block.attentions.0.to_out.0.bias"), [256]);
    assert_eq!(
        shape("up_blocks.3.resnets.2.conv_shortcut.weight"),
        [128, 256, 1, 1]
    );
    assert_eq!(shape("up_blocks.2.attentions.2.group_norm.weight"), [256]);
    assert_eq!(shape("conv_norm_out.weight"), [128]);
    assert!(store
        .get("down_blocks.0.resnets.0.conv_shortcut.weight")
        .is_none());
    assert!(store
        .get("down_blocks.3.downsamplers.0.conv.weight")
        .is_none());
    assert!(store.get("up_blocks.3.upsamplers.0.conv.weight").is_none());
}

#[test]
fn unet_forward_shapes() {
    let config = UNetConfig::tiny().with_learned_variance();
    let (unet, _) = build(config, 1);
    let x = Var::constant(Tensor::randn(&[3, 1, 16, 24], 2, 0));
    let y = no_grad(|| unet.forward(&mut Ctx::eval(), &x, &[1.0, 500.0, 999.0]));
    assert_eq!(y.shape(), &[3, 2, 16, 24]);
    let y = no_grad(|| unet.forward(&mut Ctx::eval(), &x, &[7.0]));
    assert_eq!(y.shape(), &[3, 2, 16, 24], "one timestep for the batch");

    let (unet, _) = build(UNetConfig::small(), 1);
    let x = Var::constant(Tensor::randn(&[2, 1, 28, 28], 4, 0));
    let y = no_grad(|| unet.forward(&mut Ctx::eval(), &x, &[1.0, 2.0]));
    assert_eq!(y.shape(), &[2, 1, 28, 28], "small on 28x28 (28 -> 14 -> 7)");

    let (unet, _) = build(UNetConfig::ddpm_cifar10(), 1);
    let x = Var::constant(Tensor::randn(&[1, 3, 32, 32], 3, 0));
    let y = no_grad(|| unet.forward(&mut Ctx::eval(), &x, &[10.0]));
    assert_eq!(y.shape(), &[1, 3, 32, 32]);
    assert!(y.value().data().iter().all(|v| v.is_finite()));
}

#[test]
#[should_panic(expected = "divisible by 2")]
fn unet_rejects_sizes_it_cannot_halve() {
    let (unet, _) = build(UNetConfig::tiny(), 1);
    let x = Var::constant(Tensor::zeros(&[1, 1, 15, 16]));
    unet.forward(&mut Ctx::eval(), &x, &[1.0]);
}

#[test]
fn unet_gradients_reach_every_parameter() {
    let (unet, store) = build(UNetConfig::tiny(), 4);
    let mut ctx = Ctx::train(Rng::new(5, 0));
    let x = Var::constant(Tensor::randn(&[2, 1, 16, 16], 6, 0));
    let y = unet.forward(&mut ctx, &x, &[3.0, 700.0]);
    y.square().mean_all().backward();
    for (name, p) in store.params() {
        let g = p
            .grad()
            .unwrap_or_else(|| panic!("`{name}` received no gradient"));
        // A key bias adds `q . b_k` to every score of a query alike, which softmax ignores: its
        // gradient is zero in exact arithmetic (rounding noise here), as in PyTorch.
        if !name.ends_with("to_k.bias") {
            assert!(
                g.data().iter().any(|&v| v != 0.0),
                "`{name}`'s gradient is zero"
            );
        }
        assert!(g.data().iter().all(|v| v.is_finite()), "`{name}`");
    }
}

/// `alpha_bar_t = prod_{s <= t} (1 - beta_s)` of DDPM's linear schedule
/// (`beta` from 1e-4 to 0.02 over 1000 steps), `t` counted from 0.
fn alpha_bar_linear(t: usize) -> f64 {
    (0..=t)
        .map(|s| 1.0 - (1e-4 + (0.02 - 1e-4) * s as f64 / 999.0))
        .product()
}

/// The issue's acceptance check: "the UNet tiny preset overfits one fixed batch (L_simple
/// falls below 0.05)". One fixed batch of `x_t = sqrt(abar) x0 + sqrt(1 - abar) eps` at a few
/// fixed `t`, target `eps`, AdamW at 2e-3.
#[test]
fn unet_tiny_overfits_one_fixed_batch() {
    let (unet, store) = build(UNetConfig::tiny(), 7);
    let (n, size) = (4, 16);
    let timesteps = [20usize, 250, 500, 900];
    // Smooth images in [-1, 1]: a different pair of stripes per image.
    let mut x0 = vec![0.0f32; n * size * size];
    for (k, img) in x0.chunks_exact_mut(size * size).enumerate() {
        for (p, v) in img.iter_mut().enumerate() {
            let (r, c) = ((p / size) as f32, (p % size) as f32);
            *v = (0.4 * (k + 1) as f32 * r).sin() * (0.3 * c + k as f32).cos();
        }
    }
    let eps = Tensor::randn(&[n, 1, size, size], 8, 0);
    let mut xt = vec![0.0f32; n * size * size];
    for (k, &t) in timesteps.iter().enumerate() {
        let abar = alpha_bar_linear(t);
        let (a, b) = (abar.sqrt() as f32, (1.0 - abar).sqrt() as f32);
        let range = k * size * size..(k + 1) * size * size;
        for i in range {
            xt[i] = a * x0[i] + b * eps.data()[i];
        }
    }
    let xt = Var::constant(Tensor::from_vec(xt, &[n, 1, size, size]));
    let target = Var::constant(eps);
    let t: Vec<f32> = timesteps.iter().map(|&t| t as f32).collect();

    let mut opt = Adam::new(store.params(), AdamConfig::adamw());
    let start = Instant::now();
    let mut loss = f32::INFINITY;
    let mut step = 0;
    while step < 600 && loss >= 0.05 {
        let mut ctx = Ctx::train(Rng::new(9, step));
        let l = mse_loss(&unet.forward(&mut ctx, &xt, &t), &target);
        loss = l.value().item();
        l.backward();
        opt.step(2e-3);
        store.zero_grad();
        if step.is_multiple_of(50) {
            println!("step {step:>4}: L_simple {loss:.4}");
        }
        step += 1;
    }
    println!(
        "L_simple {loss:.4} after {step} steps ({:.1} s)",
        start.elapsed().as_secs_f64()
    );
    assert!(loss < 0.05, "L_simple is still {loss} after {step} steps");
}

fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

/// Output and every gradient of one training-mode pass (dropout on) of a model built from a
/// seed, as bit patterns.
fn forward_backward_bits() -> Vec<Vec<u32>> {
    let config = UNetConfig {
        dropout: 0.1,
        ..UNetConfig::tiny()
    };
    let (unet, store) = build(config, 11);
    let x = Var::constant(Tensor::randn(&[2, 1, 16, 16], 12, 0));
    let mut ctx = Ctx::train(Rng::new(13, 0));
    let y = unet.forward(&mut ctx, &x, &[5.0, 605.0]);
    let bits = |t: &Tensor| t.data().iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
    let mut out = vec![bits(y.value())];
    y.square().mean_all().backward();
    out.extend(store.params().iter().map(|(_, p)| bits(&p.grad().unwrap())));
    out
}

#[test]
fn unet_is_bitwise_identical_on_one_and_two_threads() {
    let one = in_pool(1, forward_backward_bits);
    let two = in_pool(2, forward_backward_bits);
    assert_eq!(one.len(), two.len());
    for (k, (a, b)) in one.iter().zip(&two).enumerate() {
        assert!(a == b, "tensor {k} (0 = output, then gradients) differs");
    }
}
