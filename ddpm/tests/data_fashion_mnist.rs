//! The real Fashion-MNIST files, when installed in the default directory: both splits load with
//! the published counts, sizes, value range and first labels. Skipped (with a message) when the
//! directory is absent.

use std::path::Path;

use ddpm::data::{load, DataSource, Split, FASHION_MNIST_DIR};

#[test]
fn fashion_mnist_both_splits() {
    if !Path::new(FASHION_MNIST_DIR).is_dir() {
        println!("skipped: {FASHION_MNIST_DIR} is absent");
        return;
    }
    let source: DataSource = "fashion-mnist".parse().unwrap();
    // (split, count, first labels): the published first labels of each file
    let cases = [
        (Split::Train, 60_000, [9u8, 0, 0, 3, 0, 2, 7, 2, 5, 5]),
        (Split::Test, 10_000, [9u8, 2, 1, 1, 6, 1, 4, 6, 5, 7]),
    ];
    for (split, count, first) in cases {
        let d = load(&source, split).unwrap();
        assert_eq!(d.name(), "fashion-mnist");
        assert_eq!(d.len(), count);
        assert_eq!(d.images().shape(), &[count, 1, 28, 28]);
        assert_eq!(d.num_classes(), 10);
        assert_eq!(&d.labels()[..10], &first, "{split:?}");
        let mut per_class = [0usize; 10];
        for &l in d.labels() {
            per_class[usize::from(l)] += 1;
        }
        assert!(per_class.iter().all(|&c| c == count / 10), "{per_class:?}");
        let px = d.images().data();
        let (lo, hi) = px
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        assert_eq!((lo, hi), (-1.0, 1.0));
        // mostly background, on average darker than mid-grey
        let mean = px.iter().map(|&v| f64::from(v)).sum::<f64>() / px.len() as f64;
        assert!((-0.6..-0.2).contains(&mean), "mean {mean}");
        let padded = d.take(4).pad_to(32).unwrap();
        assert_eq!(padded.images().shape(), &[4, 1, 32, 32]);
        assert!(padded.images().data()[..64].iter().all(|&v| v == -1.0));
    }
}
