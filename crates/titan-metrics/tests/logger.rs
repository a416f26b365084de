//! The logger end to end on CPU numbers: when it logs, what JSONL holds, the plot, rank
//! gating and user sinks.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use titan_metrics::{
    tags, MetricRecord, MetricSink, MetricsConfig, MetricsLogger, RecordKind, StepMetrics,
    ValidationMetrics, WindowStats,
};

fn temp_dump(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("titan-metrics-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn config(dump: &Path) -> MetricsConfig {
    MetricsConfig {
        log_freq: 5,
        dump_folder: dump.to_path_buf(),
        total_steps: 20,
        ..MetricsConfig::default()
    }
}

fn metrics(step: u64, steps_in_window: u64) -> StepMetrics {
    StepMetrics {
        step,
        loss: 10.0 - step as f64 * 0.25,
        max_loss: 10.5 - step as f64 * 0.25,
        grad_norm: 2.0,
        lr: 1e-3,
        tokens_seen: step * 1000,
        window: WindowStats {
            tokens: 1000 * steps_in_window,
            steps: steps_in_window,
            elapsed_secs: 0.5 * steps_in_window as f64,
            data_loading_secs: 0.0,
            batches: steps_in_window,
        },
        memory: None,
        extra: vec![("custom/metric".to_string(), step as f64)],
    }
}

/// Run 20 steps the way a trainer does; returns the logger before `finish`.
fn run_twenty_steps(config: MetricsConfig) -> MetricsLogger {
    let mut logger = MetricsLogger::new(config, 6.0e6, None).unwrap();
    let mut last_logged = 0;
    for step in 1..=20 {
        logger.set_progress(step);
        if logger.should_log(step) {
            logger.log_step(&metrics(step, step - last_logged)).unwrap();
            last_logged = step;
        }
        if step % 10 == 0 {
            logger
                .log_validation(&ValidationMetrics::new(step, 9.0 - step as f64 * 0.1))
                .unwrap();
        }
    }
    logger
}

/// Files under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn logs_step_one_and_every_log_freq() {
    let dump = temp_dump("should-log");
    let logger = MetricsLogger::new(config(&dump), 1.0, None).unwrap();
    let logged: Vec<u64> = (1..=20).filter(|&s| logger.should_log(s)).collect();
    assert_eq!(logged, [1, 5, 10, 15, 20]);
    drop(logger);
    std::fs::remove_dir_all(&dump).ok();
}

#[test]
fn jsonl_has_one_object_per_logged_step_with_all_tags() {
    let dump = temp_dump("jsonl");
    let mut logger = run_twenty_steps(config(&dump));
    let path = logger.jsonl_path().unwrap().to_path_buf();
    assert_eq!(path, dump.join("metrics.jsonl"));
    logger.finish().unwrap();

    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    // Train steps 1, 5, 10, 15, 20 and validation after 10 and 20.
    let kinds: Vec<(u64, &str)> = lines
        .iter()
        .map(|l| (l["step"].as_u64().unwrap(), l["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            (1, "train"),
            (5, "train"),
            (10, "train"),
            (10, "validation"),
            (15, "train"),
            (20, "train"),
            (20, "validation"),
        ]
    );
    let step5 = &lines[1];
    assert_eq!(step5[tags::GLOBAL_AVG_LOSS], 8.75);
    assert_eq!(step5[tags::GLOBAL_MAX_LOSS], 9.25);
    assert_eq!(step5[tags::GRAD_NORM], 2);
    assert_eq!(step5[tags::LR], 0.001);
    assert_eq!(step5[tags::N_TOKENS_SEEN], 5000);
    // Window of steps 2..=5: 4,000 tokens in 2 s.
    assert_eq!(step5[tags::THROUGHPUT_TPS], 2000);
    assert_eq!(step5[tags::TFLOPS], 0.012); // 6e6 * 2000 / 1e12
    assert_eq!(step5[tags::END_TO_END_SECS], 0.5);
    assert_eq!(step5[tags::DATA_LOADING_PCT], 0);
    assert_eq!(step5["custom/metric"], 5);
    // CPU: no MFU and no memory tags.
    assert!(step5.get(tags::MFU_PCT).is_none());
    assert!(step5.get(tags::MAX_RESERVED_GIB).is_none());
    assert_eq!(lines[3][tags::VALIDATION_LOSS], 8.0);
    std::fs::remove_dir_all(&dump).unwrap();
}

/// A small well-formedness check: every tag closes in order, attributes are quoted, and the
/// document is a single `<svg>` element.
fn check_xml(doc: &str) -> Result<(), String> {
    let body = doc
        .trim()
        .strip_prefix("<?xml")
        .and_then(|rest| rest.split_once("?>"))
        .map(|(_, rest)| rest)
        .ok_or("missing XML declaration")?;
    let mut stack: Vec<String> = Vec::new();
    let mut roots = 0;
    let mut rest = body;
    while let Some(open) = rest.find('<') {
        let close = rest[open..].find('>').ok_or("unclosed tag")? + open;
        let tag = &rest[open + 1..close];
        if tag.matches('"').count() % 2 != 0 {
            return Err(format!("unbalanced quotes in <{tag}>"));
        }
        if let Some(name) = tag.strip_prefix('/') {
            let top = stack.pop().ok_or(format!("</{name}> without opening"))?;
            if top != name {
                return Err(format!("</{name}> closes <{top}>"));
            }
        } else {
            if stack.is_empty() {
                roots += 1;
            }
            if !tag.ends_with('/') {
                let name = tag.split_whitespace().next().unwrap_or("").to_string();
                stack.push(name);
            }
        }
        let text = &rest[close + 1..];
        let next = text.find('<').unwrap_or(text.len());
        if text[..next].contains('>') || text[..next].contains("& ") {
            return Err("unescaped text".to_string());
        }
        rest = text;
    }
    if !stack.is_empty() {
        return Err(format!("unclosed elements {stack:?}"));
    }
    if roots != 1 {
        return Err(format!("{roots} root elements"));
    }
    Ok(())
}

#[test]
fn plot_is_written_and_well_formed() {
    let dump = temp_dump("plot");
    let mut cfg = config(&dump);
    cfg.plot_title = "llama3 debugmodel <cpu>".to_string();
    let mut logger = run_twenty_steps(cfg);
    let plot = logger.finish().unwrap().unwrap();
    assert_eq!(plot, dump.join("metrics_plot.svg"));
    let svg = std::fs::read_to_string(&plot).unwrap();
    check_xml(&svg).unwrap();
    assert!(svg.contains("<svg"));
    assert!(svg.contains("llama3 debugmodel &lt;cpu&gt;"));
    assert!(svg.contains(">Loss<") && svg.contains(">Throughput (tokens/s per device)<"));
    // Five logged steps: a five-point loss line and a five-point throughput line, and the two
    // validation points as markers.
    let point_lists: Vec<&str> = svg
        .split("points=\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap())
        .collect();
    assert_eq!(point_lists.len(), 2);
    assert!(point_lists.iter().all(|p| p.split(' ').count() == 5));
    assert_eq!(svg.matches("<circle").count(), 2);
    // Tick labels on the step axis reach the last step.
    assert!(svg.contains(">20<"));
    // Calling finish again writes nothing new.
    assert_eq!(logger.finish().unwrap(), None);
    std::fs::remove_dir_all(&dump).unwrap();
}

#[test]
fn the_xml_check_can_fail() {
    assert!(check_xml("<?xml version=\"1.0\"?><svg><g></svg>").is_err());
    assert!(check_xml("<?xml version=\"1.0\"?><svg/><svg/>").is_err());
    assert!(check_xml("<?xml version=\"1.0\"?><svg><g/></svg>").is_ok());
}

#[test]
fn non_metrics_ranks_write_nothing() {
    let dump = temp_dump("rank1");
    let mut cfg = config(&dump);
    cfg.rank = 1;
    cfg.enable_tensorboard = true;
    let mut logger = run_twenty_steps(cfg);
    assert!(!logger.writes_on_this_rank());
    assert_eq!(logger.jsonl_path(), None);
    assert_eq!(logger.tensorboard_dir(), None);
    assert_eq!(logger.finish().unwrap(), None);
    assert_eq!(files_under(&dump), Vec::<PathBuf>::new());

    // The configured metrics rank (first rank of the last pipeline stage) does write.
    let dump_pp = temp_dump("rank-pp");
    let mut cfg = config(&dump_pp);
    cfg.rank = 2;
    cfg.metrics_rank = 2;
    let mut logger = run_twenty_steps(cfg);
    assert!(logger.finish().unwrap().is_some());
    assert!(dump_pp.join("metrics.jsonl").exists());
    std::fs::remove_dir_all(&dump_pp).unwrap();
    std::fs::remove_dir_all(&dump).ok();
}

#[test]
fn every_rank_writes_its_own_files_when_not_rank_0_only() {
    let dump = temp_dump("all-ranks");
    let mut cfg = config(&dump);
    cfg.rank = 3;
    cfg.rank_0_only = false;
    cfg.enable_tensorboard = true;
    let mut logger = run_twenty_steps(cfg);
    let tb_dir = logger.tensorboard_dir().unwrap().to_path_buf();
    assert!(tb_dir.ends_with("rank_3"));
    assert_eq!(
        logger.jsonl_path(),
        Some(dump.join("metrics_rank_3.jsonl").as_path())
    );
    let plot = logger.finish().unwrap().unwrap();
    assert_eq!(plot, dump.join("metrics_plot_rank_3.svg"));
    assert_eq!(files_under(&tb_dir).len(), 1);
    std::fs::remove_dir_all(&dump).unwrap();
}

/// A user sink collecting what it receives.
struct Collect(Arc<Mutex<Vec<MetricRecord>>>);

impl MetricSink for Collect {
    fn name(&self) -> &str {
        "collect"
    }
    fn write(&mut self, record: &MetricRecord) -> titan_metrics::Result<()> {
        self.0.lock().unwrap().push(record.clone());
        Ok(())
    }
}

#[test]
fn user_sinks_receive_every_record() {
    let dump = temp_dump("user-sink");
    let mut cfg = config(&dump);
    cfg.enable_jsonl = false;
    cfg.enable_plot = false;
    let received = Arc::new(Mutex::new(Vec::new()));
    let mut logger = MetricsLogger::new(cfg, 6.0e6, Some(1e12)).unwrap();
    logger.add_sink(Box::new(Collect(received.clone())));
    logger.log_step(&metrics(1, 1)).unwrap();
    logger
        .log_validation(&ValidationMetrics::new(1, 9.5))
        .unwrap();
    assert_eq!(logger.finish().unwrap(), None);
    let received = received.lock().unwrap();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].kind, RecordKind::Train);
    // 1000 tokens / 0.5 s = 2000 tps; 6e6 * 2000 / 1e12 = 1.2%.
    assert!((received[0].get(tags::MFU_PCT).unwrap() - 1.2).abs() < 1e-12);
    assert_eq!(received[1].get(tags::VALIDATION_LOSS), Some(9.5));
    assert_eq!(files_under(&dump), Vec::<PathBuf>::new());
    std::fs::remove_dir_all(&dump).ok();
}

#[test]
fn bad_inputs_are_errors_that_name_the_fix() {
    let dump = temp_dump("bad-inputs");
    let mut cfg = config(&dump);
    cfg.log_freq = 0;
    let err = MetricsLogger::new(cfg, 1.0, None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("metrics.log_freq"), "{err}");
    let err = MetricsLogger::new(config(&dump), 0.0, None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("flops_per_token"), "{err}");
    let err = MetricsLogger::new(config(&dump), 1.0, Some(f64::NAN))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("peak_flops"), "{err}");

    let mut logger = MetricsLogger::new(config(&dump), 1.0, None).unwrap();
    let mut zero_time = metrics(1, 1);
    zero_time.window.elapsed_secs = 0.0;
    let err = logger.log_step(&zero_time).unwrap_err().to_string();
    assert!(err.contains("elapsed_secs"), "{err}");
    logger.finish().unwrap();
    let err = logger.log_step(&metrics(2, 1)).unwrap_err().to_string();
    assert!(err.contains("finish"), "{err}");
    std::fs::remove_dir_all(&dump).ok();
}

/// A sink that always fails.
struct Broken;

impl MetricSink for Broken {
    fn name(&self) -> &str {
        "broken"
    }
    fn write(&mut self, _record: &MetricRecord) -> titan_metrics::Result<()> {
        Err(titan_metrics::Error::Sink {
            sink: "broken".to_string(),
            message: "disk on fire".to_string(),
        })
    }
}

#[test]
fn a_failing_sink_does_not_starve_the_others() {
    let dump = temp_dump("broken-sink");
    let mut cfg = config(&dump);
    cfg.enable_jsonl = false;
    cfg.enable_plot = false;
    let received = Arc::new(Mutex::new(Vec::new()));
    let mut logger = MetricsLogger::new(cfg, 1.0, None).unwrap();
    logger.add_sink(Box::new(Broken));
    logger.add_sink(Box::new(Collect(received.clone())));
    let err = logger.log_step(&metrics(1, 1)).unwrap_err().to_string();
    assert!(
        err.contains("broken") && err.contains("disk on fire"),
        "{err}"
    );
    assert_eq!(received.lock().unwrap().len(), 1);
    logger.finish().unwrap();
    std::fs::remove_dir_all(&dump).ok();
}
