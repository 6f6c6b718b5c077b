//! The up path reading its skip concatenations and upsampled images in place gives what
//! forming them gives (a process of its own: `read_in_place` is process-wide).

use autograd::nn::{Ctx, ParamStore};
use autograd::Var;
use ddpm::unet::{read_in_place, reads_in_place, UNet, UNetConfig};
use tensor::rng::Rng;
use tensor::Tensor;

/// The output and every parameter's gradient of one training pass of the tiny model, with
/// the up path reading in place or not, and how many concatenations and upsamplings the pass
/// formed (from the engine's profiler).
fn pass(in_place: bool) -> (Vec<(String, Tensor)>, [u64; 2]) {
    read_in_place(in_place);
    tensor::profile::enable(true);
    let _ = tensor::profile::take();
    let store = ParamStore::new();
    let unet = UNet::new(UNetConfig::tiny(), &store, &mut Rng::new(21, 0));
    let x = Var::constant(Tensor::randn(&[2, 1, 16, 16], 22, 0));
    let y = unet.forward(&mut Ctx::train(Rng::new(23, 0)), &x, &[7.0, 420.0]);
    let mut out = vec![("output".to_string(), y.value().clone())];
    y.square().mean_all().backward();
    out.extend(
        store
            .params()
            .into_iter()
            .map(|(name, p)| (name, p.grad().unwrap())),
    );
    let entries = tensor::profile::take();
    let calls = |op: &str| -> u64 { entries.iter().filter(|e| e.op == op).map(|e| e.calls).sum() };
    (out, [calls("concat"), calls("upsample_nearest2x")])
}

#[test]
fn reading_in_place_matches_forming_the_inputs() {
    assert!(reads_in_place(), "reading in place is the default");
    let ((fused, formed_fused), (formed, formed_formed)) = (pass(true), pass(false));
    read_in_place(true);
    // The tiny model's up path: two skip concatenations per level, one upsampling (the
    // attention's stacked projection weights are concatenated either way).
    assert_eq!(formed_fused[1], 0, "reading in place upsamples nothing");
    assert_eq!(formed_formed[1], 1, "one upsampling formed");
    assert_eq!(
        formed_formed[0] - formed_fused[0],
        4,
        "four skip concatenations formed"
    );
    assert_eq!(fused.len(), formed.len());
    let scale_of = |t: &Tensor| t.data().iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    let grad = |name: &str| &formed.iter().find(|(n, _)| n == name).expect(name).1;
    for ((name, a), (_, b)) in fused.iter().zip(&formed) {
        assert_eq!(a.shape(), b.shape(), "{name}");
        // A key projection's bias has no gradient in exact arithmetic (adding `b . q_i` to
        // every score of query `i` leaves its softmax as it is): both forms give rounding
        // noise, on the scale of the key weights' gradient.
        let scale = match name.strip_suffix("to_k.bias") {
            Some(block) => scale_of(grad(&format!("{block}to_k.weight"))),
            None => scale_of(b),
        };
        for (p, q) in a.data().iter().zip(b.data()) {
            assert!(
                (p - q).abs() <= 1e-4 * scale,
                "{name}: {p} vs {q} (scale {scale})"
            );
        }
    }
}
