//! Reads the TensorBoard event file back with a parser written here, independent of the
//! crate's writer: its own bit-by-bit CRC-32C, its own TFRecord unframing and a generic
//! protobuf decoder. Both CRCs of every record are checked.

use std::path::{Path, PathBuf};

use titan_metrics::{
    tags, MemoryStats, MetricsConfig, MetricsLogger, StepMetrics, ValidationMetrics, WindowStats,
};

/// CRC-32C computed bit by bit from the polynomial (no table), to cross-check the writer's.
fn crc32c_bitwise(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let lsb = crc & 1;
            crc >>= 1;
            if lsb != 0 {
                crc ^= 0x82F6_3B78;
            }
        }
    }
    crc ^ 0xFFFF_FFFF
}

fn masked(data: &[u8]) -> u32 {
    let crc = crc32c_bitwise(data);
    crc.rotate_right(15).wrapping_add(0xA282_EAD8)
}

/// Split a TFRecord file into its payloads, verifying both checksums of every record.
fn read_records(bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut records = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let header = bytes.get(at..at + 12).ok_or("truncated header")?;
        let len_bytes = &header[..8];
        let len_crc = u32::from_le_bytes(header[8..12].try_into().unwrap());
        if masked(len_bytes) != len_crc {
            return Err(format!("length CRC mismatch at byte {at}"));
        }
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        let data = bytes.get(at + 12..at + 12 + len).ok_or("truncated data")?;
        let data_crc_bytes = bytes
            .get(at + 12 + len..at + 16 + len)
            .ok_or("truncated data CRC")?;
        if masked(data) != u32::from_le_bytes(data_crc_bytes.try_into().unwrap()) {
            return Err(format!("data CRC mismatch at byte {at}"));
        }
        records.push(data.to_vec());
        at += 16 + len;
    }
    Ok(records)
}

/// A decoded protobuf field value.
#[derive(Debug, Clone)]
enum Field {
    Varint(u64),
    Fixed64([u8; 8]),
    Bytes(Vec<u8>),
    Fixed32([u8; 4]),
}

fn read_varint(bytes: &[u8], at: &mut usize) -> u64 {
    let mut value = 0u64;
    let mut shift = 0;
    loop {
        let byte = bytes[*at];
        *at += 1;
        value |= u64::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            return value;
        }
        shift += 7;
    }
}

/// Every (field number, value) of one message, in order.
fn decode_message(bytes: &[u8]) -> Vec<(u64, Field)> {
    let mut fields = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let key = read_varint(bytes, &mut at);
        let (number, wire) = (key >> 3, key & 7);
        let field = match wire {
            0 => Field::Varint(read_varint(bytes, &mut at)),
            1 => {
                let v = bytes[at..at + 8].try_into().unwrap();
                at += 8;
                Field::Fixed64(v)
            }
            2 => {
                let len = read_varint(bytes, &mut at) as usize;
                let v = bytes[at..at + len].to_vec();
                at += len;
                Field::Bytes(v)
            }
            5 => {
                let v = bytes[at..at + 4].try_into().unwrap();
                at += 4;
                Field::Fixed32(v)
            }
            other => panic!("unexpected wire type {other}"),
        };
        fields.push((number, field));
    }
    fields
}

/// A TensorBoard event as this test understands it.
#[derive(Debug, Default)]
struct ParsedEvent {
    wall_time: f64,
    step: i64,
    file_version: Option<String>,
    scalars: Vec<(String, f32)>,
}

fn parse_event(bytes: &[u8]) -> ParsedEvent {
    let mut event = ParsedEvent::default();
    for (number, field) in decode_message(bytes) {
        match (number, field) {
            (1, Field::Fixed64(v)) => event.wall_time = f64::from_le_bytes(v),
            (2, Field::Varint(v)) => event.step = v as i64,
            (3, Field::Bytes(v)) => event.file_version = Some(String::from_utf8(v).unwrap()),
            (5, Field::Bytes(summary)) => {
                for (number, value) in decode_message(&summary) {
                    let (1, Field::Bytes(value)) = (number, value) else {
                        panic!("Summary field {number} is not a Value");
                    };
                    let mut tag = String::new();
                    let mut simple = None;
                    for (number, field) in decode_message(&value) {
                        match (number, field) {
                            (1, Field::Bytes(v)) => tag = String::from_utf8(v).unwrap(),
                            (2, Field::Fixed32(v)) => simple = Some(f32::from_le_bytes(v)),
                            (n, f) => panic!("unexpected Value field {n}: {f:?}"),
                        }
                    }
                    event.scalars.push((tag, simple.expect("simple_value")));
                }
            }
            (n, f) => panic!("unexpected Event field {n}: {f:?}"),
        }
    }
    event
}

fn temp_dump(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("titan-metrics-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn only_file_in(dir: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files.into_iter().next().unwrap()
}

fn step_metrics(step: u64, loss: f64) -> StepMetrics {
    StepMetrics {
        step,
        loss,
        max_loss: loss + 0.25,
        grad_norm: 1.5,
        lr: 3e-4,
        tokens_seen: step * 8192,
        window: WindowStats {
            tokens: 8192,
            steps: 1,
            elapsed_secs: 0.25,
            data_loading_secs: 0.05,
            batches: 2,
        },
        memory: Some(MemoryStats {
            max_active_bytes: 1 << 30,
            max_reserved_bytes: 3 << 29,
            capacity_bytes: 80 << 30,
            num_alloc_retries: 0,
            num_ooms: 0,
        }),
        extra: Vec::new(),
    }
}

#[test]
fn event_file_round_trip_with_crcs() {
    let dump = temp_dump("tb-roundtrip");
    let config = MetricsConfig {
        log_freq: 1,
        enable_tensorboard: true,
        enable_jsonl: false,
        enable_plot: false,
        dump_folder: dump.clone(),
        ..MetricsConfig::default()
    };
    let mut logger = MetricsLogger::new(config, 1e9, Some(989e12)).unwrap();
    let tb_dir = logger.tensorboard_dir().unwrap().to_path_buf();
    for (step, loss) in [(1, 8.0), (2, 7.5)] {
        logger.log_step(&step_metrics(step, loss)).unwrap();
    }
    logger
        .log_validation(&ValidationMetrics::new(2, 7.25))
        .unwrap();
    logger.finish().unwrap();

    // <dump>/tb/<YYYYmmdd-HHMM>/events.out.tfevents.<secs>.<host>.<pid>.<uid>
    assert_eq!(tb_dir.parent().unwrap(), dump.join("tb"));
    let stamp = tb_dir.file_name().unwrap().to_str().unwrap();
    assert_eq!(stamp.len(), 13, "{stamp}");
    assert_eq!(stamp.as_bytes()[8], b'-');
    assert!(stamp
        .chars()
        .filter(|c| *c != '-')
        .all(|c| c.is_ascii_digit()));
    let event_path = only_file_in(&tb_dir);
    let file_name = event_path
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(file_name.starts_with("events.out.tfevents."), "{file_name}");

    let bytes = std::fs::read(&event_path).unwrap();
    let events: Vec<ParsedEvent> = read_records(&bytes)
        .unwrap()
        .iter()
        .map(|r| parse_event(r))
        .collect();

    let header = &events[0];
    assert_eq!(header.file_version.as_deref(), Some("brain.Event:2"));
    assert!(header.scalars.is_empty());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - header.wall_time).abs() < 600.0);
    let secs_in_name: u64 = file_name["events.out.tfevents.".len()..]
        .split('.')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(secs_in_name, header.wall_time as u64);

    // One scalar per event, as torch's add_scalar writes them.
    assert!(events[1..].iter().all(|e| e.scalars.len() == 1));
    let scalar = |step: i64, tag: &str| -> f32 {
        events
            .iter()
            .filter(|e| e.step == step)
            .flat_map(|e| e.scalars.iter())
            .find(|(t, _)| t == tag)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no {tag} at step {step}"))
    };
    // TensorBoard stores f32: compare with the f64 value the formulas give, cast once.
    let expect = |step: i64, tag: &str, value: f64| {
        assert_eq!(scalar(step, tag), value as f32, "{tag} at step {step}");
    };
    expect(1, tags::GLOBAL_AVG_LOSS, 8.0);
    expect(2, tags::GLOBAL_AVG_LOSS, 7.5);
    expect(2, tags::GLOBAL_MAX_LOSS, 7.75);
    expect(2, tags::GRAD_NORM, 1.5);
    expect(2, tags::LR, 3e-4);
    // 8192 tokens / 0.25 s = 32,768 tps; x 1e9 FLOPs/token = 32.768 TFLOP/s; / 989 TFLOP/s peak.
    expect(2, tags::THROUGHPUT_TPS, 32_768.0);
    expect(2, tags::TFLOPS, 1e9 * 32_768.0 / 1e12);
    expect(2, tags::MFU_PCT, 100.0 * 1e9 * 32_768.0 / 989e12);
    assert!((scalar(2, tags::MFU_PCT) - 3.3132).abs() < 1e-4);
    expect(2, tags::END_TO_END_SECS, 0.25);
    expect(2, tags::DATA_LOADING_SECS, 0.05 / 2.0);
    expect(2, tags::DATA_LOADING_PCT, 100.0 * 0.05 / 0.25);
    expect(2, tags::MAX_RESERVED_GIB, 1.5);
    expect(2, tags::MAX_RESERVED_PCT, 1.875);
    expect(2, tags::MAX_ACTIVE_GIB, 1.0);
    expect(2, tags::NUM_OOMS, 0.0);
    expect(2, tags::N_TOKENS_SEEN, 16_384.0);
    expect(2, tags::VALIDATION_LOSS, 7.25);
    // Steps 1 and 2 each log 17 tags (with MFU and memory), then one validation scalar.
    assert_eq!(events.len(), 1 + 17 * 2 + 1);

    std::fs::remove_dir_all(&dump).unwrap();
}

#[test]
fn the_reader_rejects_a_corrupted_record() {
    let dump = temp_dump("tb-corrupt");
    let config = MetricsConfig {
        enable_tensorboard: true,
        enable_jsonl: false,
        enable_plot: false,
        dump_folder: dump.clone(),
        ..MetricsConfig::default()
    };
    let mut logger = MetricsLogger::new(config, 1e9, None).unwrap();
    logger.log_step(&step_metrics(1, 8.0)).unwrap();
    let tb_dir = logger.tensorboard_dir().unwrap().to_path_buf();
    logger.finish().unwrap();
    let mut bytes = std::fs::read(only_file_in(&tb_dir)).unwrap();
    assert!(read_records(&bytes).is_ok());
    let last = bytes.len() - 6; // inside the last record's data
    bytes[last] ^= 0x01;
    let err = read_records(&bytes).unwrap_err();
    assert!(err.contains("data CRC mismatch"), "{err}");
    std::fs::remove_dir_all(&dump).unwrap();
}
