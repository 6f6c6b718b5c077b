//! The metrics classifier learns the built-in shapes, saves and loads with its metadata, and is
//! deterministic for a seed; its features feed the Fréchet distance.

use ddpm::classifier::{Classifier, TrainOptions, ARCHITECTURE, FEATURES};
use ddpm::data::shapes::shapes;
use ddpm::fid::{frechet_distance_of, inception_score};

fn options(steps: usize) -> TrainOptions {
    TrainOptions {
        steps,
        batch: 32,
        lr: 2e-3,
        seed: 7,
    }
}

#[test]
fn learns_shapes_and_round_trips_through_a_file() {
    let train = shapes(4000, 11);
    let test = shapes(1000, 12);
    let start = std::time::Instant::now();
    let (model, accuracy) = Classifier::train(&train, &test, options(200)).unwrap();
    println!(
        "shapes test accuracy {:.2}% in {:.1} s",
        accuracy * 100.0,
        start.elapsed().as_secs_f64()
    );
    assert!(accuracy >= 0.95, "test accuracy {accuracy} is below 95%");
    assert_eq!(model.metadata["architecture"], ARCHITECTURE);
    assert_eq!(model.metadata["data"], "shapes");
    assert_eq!(model.metadata["classes"], "5");

    let dir = std::env::temp_dir().join(format!("metrics-classifier-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.safetensors");
    model.save(&path).unwrap();
    let loaded = Classifier::load(&path).unwrap();
    assert_eq!(loaded.metadata, model.metadata);
    let images = test.take(64);
    let a = model.features(images.images()).unwrap();
    let b = loaded.features(images.images()).unwrap();
    assert_eq!(a.shape(), &[64, FEATURES]);
    assert_eq!(a.data(), b.data());
    assert_eq!(loaded.accuracy(&test).unwrap(), accuracy);

    // Real against real: two halves of the test set are close; against blank images, far.
    let half = test.take(1000);
    let f = model.features(half.images()).unwrap();
    let (first, second) = f.data().split_at(500 * FEATURES);
    let same = frechet_distance_of(first, second, FEATURES);
    let blank = tensor::Tensor::full(&[500, 1, 32, 32], -1.0);
    let g = model.features(&blank).unwrap();
    let noise = tensor::rng::Rng::new(3, 0).normal(&[500, 1, 32, 32]);
    let n = model.features(&noise).unwrap();
    let far = frechet_distance_of(first, n.data(), FEATURES);
    println!("FID halves {same:.3}, against noise {far:.3}");
    assert!(same * 10.0 < far, "halves {same}, noise {far}");
    assert!(frechet_distance_of(g.data(), g.data(), FEATURES).abs() < 1e-6);
    let is = inception_score(&model.probabilities(half.images()).unwrap());
    assert!(is > 4.0 && is <= 5.0 + 1e-9, "IS of the test images {is}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_same_seed_gives_the_same_classifier_and_bad_files_are_refused() {
    let train = shapes(200, 1);
    let test = shapes(50, 2);
    let (a, _) = Classifier::train(&train, &test, options(3)).unwrap();
    let (b, _) = Classifier::train(&train, &test, options(3)).unwrap();
    let x = test.images();
    assert_eq!(a.logits(x).unwrap().data(), b.logits(x).unwrap().data());
    // 28x28 input is padded to 32x32; 3 channels are refused.
    assert_eq!(
        a.features(&tensor::Tensor::zeros(&[2, 1, 28, 28]))
            .unwrap()
            .shape(),
        &[2, FEATURES]
    );
    assert!(a.features(&tensor::Tensor::zeros(&[2, 3, 32, 32])).is_err());
    let bad = std::env::temp_dir().join(format!(
        "not-a-classifier-{}.safetensors",
        std::process::id()
    ));
    tensor::io::save(
        &bad,
        &[("w", &tensor::Tensor::zeros(&[2]))],
        &Default::default(),
    )
    .unwrap();
    let err = Classifier::load(&bad).err().unwrap().to_string();
    assert!(err.contains("architecture"), "{err}");
    std::fs::remove_file(&bad).unwrap();
}
