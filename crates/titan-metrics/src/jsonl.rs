//! JSON Lines sink (a Titan addition): one object per record with `step`, `kind`, `wall_time`
//! and every tag, so a run's metrics can be read back without TensorBoard.
//!
//! The file is opened for appending, so a resumed run continues the same file. Non-finite
//! values (a NaN loss) become `null`, since JSON has no NaN.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{Map, Number, Value};

use crate::error::{Error, Result};
use crate::record::MetricRecord;
use crate::sink::MetricSink;

/// Writes each record as one JSON object per line.
pub struct JsonlSink {
    path: PathBuf,
    out: BufWriter<File>,
}

impl JsonlSink {
    /// Open (or create) `path` for appending; parent folders are created.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io("create the metrics folder", parent, e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io("open the JSONL metrics file", &path, e))?;
        Ok(Self {
            path,
            out: BufWriter::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The JSON object written for `record`.
pub fn record_to_json(record: &MetricRecord) -> Value {
    let mut object = Map::new();
    object.insert("step".to_string(), Value::from(record.step));
    object.insert("kind".to_string(), Value::from(record.kind.as_str()));
    object.insert(
        "wall_time".to_string(),
        number_or_null(record.wall_time_secs),
    );
    for (tag, value) in &record.values {
        object.insert(tag.clone(), number_or_null(*value));
    }
    Value::Object(object)
}

/// Whole numbers that are counts (tokens seen, OOMs) stay integers in the JSON.
fn number_or_null(value: f64) -> Value {
    if value.fract() == 0.0 && value.abs() < 9.0e15 {
        Value::from(value as i64)
    } else {
        Number::from_f64(value).map_or(Value::Null, Value::Number)
    }
}

impl MetricSink for JsonlSink {
    fn name(&self) -> &str {
        "jsonl"
    }

    fn write(&mut self, record: &MetricRecord) -> Result<()> {
        let line = record_to_json(record).to_string();
        writeln!(self.out, "{line}").map_err(|e| Error::io("write", &self.path, e))
    }

    fn flush(&mut self) -> Result<()> {
        self.out
            .flush()
            .map_err(|e| Error::io("flush", &self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RecordKind;

    #[test]
    fn json_object_has_step_kind_and_tags() {
        let mut record = MetricRecord::new(7, RecordKind::Train);
        record.push("loss_metrics/global_avg_loss", 7.25);
        record.push("memory/num_ooms", 0.0);
        record.push("grad_norm", f64::NAN);
        let json = record_to_json(&record);
        assert_eq!(json["step"], 7);
        assert_eq!(json["kind"], "train");
        assert_eq!(json["loss_metrics/global_avg_loss"], 7.25);
        assert_eq!(json["memory/num_ooms"], 0);
        assert!(json["memory/num_ooms"].is_i64());
        assert!(json["grad_norm"].is_null());
        assert!(json["wall_time"].as_f64().unwrap() > 1.0e9);
    }
}
