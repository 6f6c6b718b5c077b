//! Output of `ddpm bench`: a human line per result, or one JSON object per line.

use serde_json::{Map, Value};

/// Where benchmark results go.
pub struct Report {
    json: bool,
}

impl Report {
    /// A report printing JSON lines (`json`) or human text.
    pub fn new(json: bool) -> Report {
        Report { json }
    }

    /// Prints `text` in the human format only (headings).
    pub fn heading(&self, text: &str) {
        if !self.json {
            println!("{text}");
        }
    }

    /// Prints one result: `fields` as a JSON object, or `human` as text.
    pub fn line(&self, fields: &[(&str, Value)], human: &str) {
        if self.json {
            let object: Map<String, Value> = fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            println!("{}", Value::Object(object));
        } else {
            println!("{human}");
        }
    }
}

/// The fields a kernel's result ends with: the threads, the median milliseconds, GFLOP/s, the
/// FMA peak measured in the same process and the fraction of it.
pub fn rate_fields(
    threads: usize,
    seconds: f64,
    gflops: f64,
    peak_gflops: f64,
) -> [(&'static str, Value); 5] {
    [
        ("threads", threads.into()),
        ("ms", Value::from(seconds * 1e3)),
        ("gflops", gflops.into()),
        ("peak_gflops", peak_gflops.into()),
        ("fraction_of_peak", (gflops / peak_gflops).into()),
    ]
}
