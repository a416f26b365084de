//! TensorBoard event files written by hand: TFRecord framing, CRC-32C and the `Event` protobuf,
//! laid out as torch's `SummaryWriter` lays them out (one scalar per event, a `brain.Event:2`
//! header first), so TensorBoard and torchtitan's tooling read them unchanged.

pub mod crc32c;
pub mod proto;
pub mod tfrecord;

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock;
use crate::error::{Error, Result};
use crate::record::MetricRecord;
use crate::sink::MetricSink;
use proto::{Event, EventPayload, SummaryValue};

/// The header every event file starts with.
pub const FILE_VERSION: &str = "brain.Event:2";

/// Distinguishes two writers opened by one process in the same second.
static WRITER_UID: AtomicU64 = AtomicU64::new(0);

/// An open `events.out.tfevents.*` file.
pub struct EventFileWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventFileWriter {
    /// Create `log_dir` and a new event file in it named as torch's writer names it:
    /// `events.out.tfevents.<unix secs, 10 digits>.<hostname>.<pid>.<uid>`. Writes the header.
    pub fn create(log_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(log_dir)
            .map_err(|e| Error::io("create the TensorBoard folder", log_dir, e))?;
        let wall_time = clock::unix_time_secs();
        let uid = WRITER_UID.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "events.out.tfevents.{:010}.{}.{}.{uid}",
            wall_time as u64,
            clock::hostname(),
            std::process::id()
        );
        let path = log_dir.join(name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io("create the TensorBoard event file", &path, e))?;
        let mut writer = Self {
            path,
            out: BufWriter::new(file),
        };
        writer.write_event(&Event {
            wall_time,
            step: 0,
            payload: EventPayload::FileVersion(FILE_VERSION.to_string()),
        })?;
        writer.flush()?;
        Ok(writer)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one event.
    pub fn write_event(&mut self, event: &Event) -> Result<()> {
        tfrecord::write_record(&mut self.out, &event.encode())
            .map_err(|e| Error::io("write", &self.path, e))
    }

    /// Append one scalar (torch's `add_scalar(tag, value, step)`; TensorBoard stores f32).
    pub fn add_scalar(&mut self, tag: &str, value: f64, step: u64, wall_time: f64) -> Result<()> {
        self.write_event(&Event {
            wall_time,
            step: i64::try_from(step).unwrap_or(i64::MAX),
            payload: EventPayload::Summary(vec![SummaryValue {
                tag: tag.to_string(),
                simple_value: value as f32,
            }]),
        })
    }

    pub fn flush(&mut self) -> Result<()> {
        self.out
            .flush()
            .map_err(|e| Error::io("flush", &self.path, e))
    }
}

/// Writes every value of every record as a TensorBoard scalar.
pub struct TensorBoardSink {
    writer: EventFileWriter,
}

impl TensorBoardSink {
    /// Open a new event file in `log_dir` (created if missing).
    pub fn create(log_dir: &Path) -> Result<Self> {
        let writer = EventFileWriter::create(log_dir)?;
        tracing::info!(
            "TensorBoard logging enabled. Logs will be saved at {}",
            log_dir.display()
        );
        Ok(Self { writer })
    }

    /// The event file being written.
    pub fn path(&self) -> &Path {
        self.writer.path()
    }
}

impl MetricSink for TensorBoardSink {
    fn name(&self) -> &str {
        "tensorboard"
    }

    fn write(&mut self, record: &MetricRecord) -> Result<()> {
        for (tag, value) in &record.values {
            self.writer
                .add_scalar(tag, *value, record.step, record.wall_time_secs)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.writer.flush()
    }
}
