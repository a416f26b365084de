//! The sink trait: anything that takes [`MetricRecord`]s. Console, JSONL and TensorBoard are
//! sinks; a user adds another (a database, an HTTP endpoint) with `MetricsLogger::add_sink`.

use crate::error::Result;
use crate::record::MetricRecord;

/// A destination for logged metrics.
pub trait MetricSink: Send {
    /// Short name used in error messages and logs.
    fn name(&self) -> &str;

    /// Take one record (called once per logged training step or validation pass).
    fn write(&mut self, record: &MetricRecord) -> Result<()>;

    /// Make everything written so far durable (called after each record by the logger).
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }

    /// End of the run: flush and release resources. No `write` follows.
    fn close(&mut self) -> Result<()> {
        self.flush()
    }
}
