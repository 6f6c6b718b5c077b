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
