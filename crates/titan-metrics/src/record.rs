//! One logged point: a step, its wall time and an ordered list of tagged values. Every sink
//! consumes this, so a new sink never needs to know how the values were computed.

/// Whether a record comes from a training step or a validation pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    Train,
    Validation,
}

impl RecordKind {
    /// The name written to JSONL's `kind` field.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Train => "train",
            RecordKind::Validation => "validation",
        }
    }
}

/// Tagged values of one log step, in the order torchtitan logs them.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricRecord {
    pub step: u64,
    /// Seconds since the Unix epoch when the record was made (TensorBoard's `wall_time`).
    pub wall_time_secs: f64,
    pub kind: RecordKind,
    pub values: Vec<(String, f64)>,
}

impl MetricRecord {
    /// An empty record for `step`, stamped with the current time.
    pub fn new(step: u64, kind: RecordKind) -> Self {
        Self {
            step,
            wall_time_secs: crate::clock::unix_time_secs(),
            kind,
            values: Vec::new(),
        }
    }

    /// Append a value. Tags are not deduplicated; [`MetricRecord::get`] returns the first.
    pub fn push(&mut self, tag: impl Into<String>, value: f64) {
        self.values.push((tag.into(), value));
    }

    /// The first value logged under `tag`.
    pub fn get(&self, tag: &str) -> Option<f64> {
        self.values
            .iter()
            .find(|(name, _)| name == tag)
            .map(|(_, value)| *value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_finds_first_value_by_tag() {
        let mut record = MetricRecord::new(3, RecordKind::Train);
        record.push("a", 1.0);
        record.push("b", 2.0);
        assert_eq!(record.get("b"), Some(2.0));
        assert_eq!(record.get("c"), None);
        assert_eq!(record.kind.as_str(), "train");
        assert!(record.wall_time_secs > 1.0e9);
    }
}
