//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use titan_data::{Batch, DataLoader, DataLoaderConfig, DatasetRegistry, Tokenizer};

/// torchtitan's test tokenizer (ids = ASCII bytes 33..126; BOS 2002, EOS 2003).
pub fn torchtitan_tokenizer() -> Arc<Tokenizer> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torchtitan-tokenizer");
    Arc::new(Tokenizer::from_dir(dir).unwrap())
}

pub const BOS: u32 = 2002;
pub const EOS: u32 = 2003;

/// A scratch folder removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("titan-data-test-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Up to `n` batches (fewer if a finite loader ends).
pub fn take(loader: &mut DataLoader, n: usize) -> Vec<Batch> {
    let mut out = Vec::new();
    for _ in 0..n {
        match loader.next_batch().unwrap() {
            Some(batch) => out.push(batch),
            None => break,
        }
    }
    out
}

pub fn loader(
    cfg: &DataLoaderConfig,
    tokenizer: &Arc<Tokenizer>,
    registry: &DatasetRegistry,
) -> DataLoader {
    DataLoader::new(cfg, Arc::clone(tokenizer), registry).unwrap()
}

/// A JSON-lines file body with one `{"text": ...}` record per document.
pub fn jsonl(texts: &[&str]) -> String {
    texts
        .iter()
        .map(|t| serde_json::json!({ "text": t }).to_string() + "\n")
        .collect()
}

/// A Parquet file with one required string column `column` holding `texts`, `per_group` rows
/// per row group.
pub fn parquet_bytes(column: &str, texts: &[&str], per_group: usize) -> Vec<u8> {
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;

    let schema = Arc::new(
        parse_message_type(&format!(
            "message doc {{ REQUIRED BYTE_ARRAY {column} (UTF8); }}"
        ))
        .unwrap(),
    );
    let mut out = Vec::new();
    let mut writer = SerializedFileWriter::new(
        &mut out,
        schema,
        Arc::new(WriterProperties::builder().build()),
    )
    .unwrap();
    for group in texts.chunks(per_group.max(1)) {
        let mut row_group = writer.next_row_group().unwrap();
        while let Some(mut column_writer) = row_group.next_column().unwrap() {
            let values: Vec<ByteArray> = group.iter().map(|t| ByteArray::from(*t)).collect();
            column_writer
                .typed::<ByteArrayType>()
                .write_batch(&values, None, None)
                .unwrap();
            column_writer.close().unwrap();
        }
        row_group.close().unwrap();
    }
    writer.close().unwrap();
    out
}
