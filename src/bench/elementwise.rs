//! `ddpm bench elementwise`: memory-bound kernels on 16M elements, as GB/s (bytes read plus
//! bytes written) and as a fraction of a plain copy measured in the same run.

use serde_json::Value;

use tensor::ops::bandwidth::{elementwise_cases, BENCH_ELEMENTS};

use super::timing::median_seconds;
use super::Report;

/// Times every case of [`elementwise_cases`] on 16M elements; each is compared with the
/// `copy` case measured in the same run.
pub fn run(threads: usize, report: &Report) -> Result<(), String> {
    let mut cases = elementwise_cases(BENCH_ELEMENTS);
    let copy = cases
        .iter()
        .position(|c| c.name == "copy")
        .ok_or("the element-wise cases have no copy baseline")?;
    let mut copy_case = cases.remove(copy);
    let copy_seconds = median_seconds(&mut copy_case.run);
    let baseline = copy_case.gb_per_s(copy_seconds);
    cases.insert(0, copy_case);
    for case in &mut cases {
        let seconds = if case.name == "copy" {
            copy_seconds
        } else {
            median_seconds(&mut case.run)
        };
        let gbs = case.gb_per_s(seconds);
        let name = case.name;
        let fraction = gbs / baseline;
        report.line(
            &[
                ("bench", "elementwise".into()),
                ("op", name.into()),
                ("threads", threads.into()),
                ("ms", Value::from(seconds * 1e3)),
                ("gb_per_s", gbs.into()),
                ("copy_gb_per_s", baseline.into()),
                ("fraction_of_copy", fraction.into()),
            ],
            &format!(
                "elementwise {name:<10} threads={threads}  {:>8.3} ms  {gbs:>6.1} GB/s  {:>5.1}% of copy",
                seconds * 1e3,
                fraction * 100.0
            ),
        );
    }
    Ok(())
}
