//! Loading configurations end to end: committed files, layering, errors, round trips.

use std::path::{Path, PathBuf};

use titan_config::{
    parse_args, schema, AcMode, Device, Error, Invocation, JobConfig, Origin, SelectiveAcOption,
};

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs")
}

fn committed_configs() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(configs_dir())
        .map(|dir| {
            dir.filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// A scratch folder unique to one test, removed when dropped.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("titan-config-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Scratch { dir }
    }

    /// Writes `job.toml` with `text` and returns its path.
    fn toml(&self, text: &str) -> PathBuf {
        let path = self.dir.join("job.toml");
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(args: &[&str]) -> JobConfig {
    match parse_args(args) {
        Ok(Invocation::Run(config)) => *config,
        Ok(Invocation::Help(_)) => panic!("unexpected help for {args:?}"),
        Err(e) => panic!("{args:?}: {e}"),
    }
}

fn error(args: &[&str]) -> Error {
    match parse_args(args) {
        Err(e) => e,
        Ok(_) => panic!("{args:?} should fail"),
    }
}

#[test]
fn every_committed_config_loads() {
    let files = committed_configs();
    let names: Vec<_> = files
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
        .collect();
    for expected in [
        "llama3_debugmodel.toml",
        "llama3_8b.toml",
        "llama3_70b.toml",
        "llama3_405b.toml",
        "titan_default.toml",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing");
    }
    for file in &files {
        let path = file.to_string_lossy();
        let config = run(&["--job.config_file", &path]);
        assert_eq!(config.job.config_file.as_deref(), Some(path.as_ref()));
    }
}

#[test]
fn torchtitan_files_keep_their_values() {
    let path = configs_dir().join("llama3_8b.toml");
    let config = run(&["--config", &path.to_string_lossy()]);
    assert_eq!(config.model.flavor, "8B");
    assert_eq!(config.optimizer.lr, 3e-4);
    assert_eq!(config.training.seq_len, 8192);
    assert_eq!(config.training.dataset, "c4");
    assert_eq!(
        config.activation_checkpoint.selective_ac_option,
        SelectiveAcOption::Op
    );
    assert_eq!(config.quantize.linear.float8.filter_fqns, ["output"]);
    assert_eq!(config.validation.steps, 1200);
    // Unset in the file: torchtitan's default.
    assert_eq!(config.optimizer.weight_decay, 0.1);

    let debug = run(&[
        "--config",
        &configs_dir()
            .join("llama3_debugmodel.toml")
            .to_string_lossy(),
    ]);
    assert_eq!(debug.training.dataset, "sotu");
    assert_eq!(debug.model.hf_assets_path, None);
    assert_eq!(debug.lr_scheduler.decay_ratio, Some(0.8));
    assert_eq!(
        debug.parallelism.pipeline_parallel_schedule,
        "Interleaved1F1B"
    );
}

#[test]
fn support_check_tells_the_truth_about_committed_files() {
    let unsupported = |name: &str| -> Vec<String> {
        let config = run(&["--config", &configs_dir().join(name).to_string_lossy()]);
        config
            .unsupported_settings()
            .into_iter()
            .map(|u| u.key)
            .collect()
    };
    assert!(unsupported("titan_default.toml").is_empty());
    assert!(unsupported("llama3_debugmodel.toml").is_empty());
    assert_eq!(
        unsupported("llama3_8b.toml"),
        ["profiling.enable_profiling"]
    );
    assert_eq!(
        unsupported("llama3_70b.toml"),
        [
            "profiling.enable_profiling",
            "parallelism.tensor_parallel_degree"
        ]
    );
    let big = unsupported("llama3_405b.toml");
    for key in [
        "model.converters",
        "parallelism.tensor_parallel_degree",
        "parallelism.enable_async_tensor_parallel",
        "compile.enable",
    ] {
        assert!(big.iter().any(|k| k == key), "{key} not refused: {big:?}");
    }
}

#[test]
fn embedded_default_is_the_committed_file() {
    let embedded = JobConfig::embedded_default();
    let path = configs_dir().join("titan_default.toml");
    let from_file = JobConfig::load(Some(&path), &[] as &[&str]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(embedded, from_file);
    assert_eq!(run(&[]), embedded);

    assert_eq!(embedded.model.name, "llama3");
    assert_eq!(embedded.model.flavor, "debugmodel");
    assert_eq!(embedded.training.dataset, "sotu");
    assert_eq!(embedded.training.device, Device::Cpu);
    assert_eq!(embedded.training.seq_len, 128);
    assert_eq!(embedded.training.local_batch_size, 8);
    assert_eq!(embedded.training.steps, 40);
    assert_eq!(embedded.optimizer.lr, 3e-3);
    assert_eq!(embedded.lr_scheduler.warmup_steps, 5);
    assert_eq!(embedded.metrics.log_freq, 5);
    assert!(!embedded.checkpoint.enable);
    assert!(embedded.validation.enable);
    assert_eq!(embedded.validation.freq, 20);
    assert_eq!(embedded.validation.step_limit(), Some(2));
    assert_eq!(embedded.job.dump_folder, "./outputs");
    assert_eq!(embedded.model.hf_assets_path, None);
}

#[test]
fn precedence_is_command_line_over_file_over_defaults() {
    let scratch = Scratch::new("precedence");
    let path =
        scratch.toml("[training]\nsteps = 10\nseq_len = 512\n[lr_scheduler]\ndecay_ratio = 0.5\n");
    let path = path.to_string_lossy();
    let config = run(&[
        "--job.config_file",
        &path,
        "--training.steps",
        "20",
        "--lr_scheduler.decay_ratio=none",
    ]);
    assert_eq!(config.training.steps, 20); // command line beats file
    assert_eq!(config.training.seq_len, 512); // file beats default
    assert_eq!(config.training.local_batch_size, 8); // default
    assert_eq!(config.lr_scheduler.decay_ratio, None); // unset on the command line
    let later = run(&[
        "--config",
        &path,
        "--training.steps=3",
        "--training.steps",
        "4",
    ]);
    assert_eq!(later.training.steps, 4); // the last occurrence wins
}

#[test]
fn flags_negations_and_lists() {
    let config = run(&[
        "--checkpoint.enable",
        "--checkpoint.no-initial_load_model_only",
        "--metrics.no_enable_plot",
        "--model.converters",
        "quantize.linear.float8,quantize.linear.mx",
        "--training.dataset_path",
        "a,b",
        "--model.rope_scaling=false",
        "--activation_checkpoint.mode",
        "full",
    ]);
    assert!(config.checkpoint.enable);
    assert!(!config.checkpoint.initial_load_model_only);
    assert!(!config.metrics.enable_plot);
    assert_eq!(
        config.model.converters,
        ["quantize.linear.float8", "quantize.linear.mx"]
    );
    assert_eq!(config.training.dataset_path.as_deref(), Some("a,b"));
    assert_eq!(config.model.rope_scaling, Some(false));
    assert_eq!(config.activation_checkpoint.mode, AcMode::Full);
}

#[test]
fn unknown_option_in_file_names_file_line_and_suggestion() {
    let scratch = Scratch::new("unknown-key");
    let path = scratch.toml("[job]\ndescription = \"x\"\n\n[training]\nstpes = 5\n");
    let message = error(&["--config", &path.to_string_lossy()]).to_string();
    let expected = format!(
        "unknown option `training.stpes` in {}:5; did you mean `training.steps`?",
        path.display()
    );
    assert!(message.starts_with(&expected), "{message}");
}

#[test]
fn unknown_section_in_file_names_the_closest_section() {
    let scratch = Scratch::new("unknown-section");
    let path = scratch.toml("[trainig]\nsteps = 5\n");
    match error(&["--config", &path.to_string_lossy()]) {
        Error::UnknownSection {
            key,
            origin,
            suggestion,
        } => {
            assert_eq!(key, "trainig");
            assert_eq!(suggestion.as_deref(), Some("training"));
            assert!(matches!(origin, Origin::File { line: Some(1), .. }));
        }
        other => panic!("{other}"),
    }
}

#[test]
fn unknown_option_on_the_command_line_suggests_a_flag() {
    let message = error(&["--training.stpes", "5"]).to_string();
    assert!(
        message.starts_with(
            "unknown option `training.stpes` on the command line; did you mean `--training.steps`?"
        ),
        "{message}"
    );
    let unknown_section = error(&["--trainig.steps=5"]).to_string();
    assert!(
        unknown_section.contains("`--training.steps`"),
        "{unknown_section}"
    );
}

#[test]
fn wrong_types_name_key_value_and_expected_type() {
    let cli = error(&["--training.steps", "many"]).to_string();
    assert_eq!(
        cli,
        "wrong type for `training.steps` on the command line: got `many`, expected int >= 0"
    );
    let negative = error(&["--training.steps=-5"]).to_string();
    assert!(
        negative.contains("got `-5`, expected int >= 0"),
        "{negative}"
    );

    let scratch = Scratch::new("wrong-type");
    let path = scratch.toml("[training]\nseq_len = \"long\"\n");
    let file = error(&["--config", &path.to_string_lossy()]).to_string();
    assert_eq!(
        file,
        format!(
            "wrong type for `training.seq_len` in {}:2: got `\"long\"`, expected int >= 0",
            path.display()
        )
    );

    let scratch = Scratch::new("wrong-choice");
    let path = scratch.toml("[activation_checkpoint]\nmode = \"fulll\"\n");
    let choice = error(&["--config", &path.to_string_lossy()]).to_string();
    assert!(
        choice.contains(
            "expected \"selective\" | \"full\" | \"memory_budget\" | \"none\"; did you mean `full`?"
        ),
        "{choice}"
    );
    let decay = error(&["--lr_scheduler.decay_type", "exponential"]).to_string();
    assert!(
        decay.contains("\"linear\" | \"sqrt\" | \"cosine\""),
        "{decay}"
    );
}

#[test]
fn invalid_values_name_where_they_were_set() {
    let scratch = Scratch::new("invalid");
    let path = scratch.toml("[training]\nseq_len = 0\n");
    let message = error(&[
        "--config",
        &path.to_string_lossy(),
        "--lr_scheduler.decay_ratio",
        "1.5",
    ])
    .to_string();
    assert!(
        message.contains(&format!(
            "`training.seq_len = 0` (in {}:2): must be at least 1",
            path.display()
        )),
        "{message}"
    );
    assert!(
        message.contains(
            "`lr_scheduler.decay_ratio = 1.5` (on the command line): must be between 0 and 1"
        ),
        "{message}"
    );
}

#[test]
fn help_is_an_invocation() {
    match parse_args(&["--training.stpes", "5", "--help"]) {
        Ok(Invocation::Help(text)) => {
            assert!(text.contains("--training.steps  int >= 0  (default: 10000, default run: 40)"));
            let option_lines = text
                .lines()
                .filter(|l| l.starts_with("  --") && l.contains("(default: "))
                .count();
            assert_eq!(option_lines, schema().options.len(), "one line per option");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn print_config_round_trips() {
    let overrides = [
        "--training.steps",
        "42",
        "--lr_scheduler.decay_ratio",
        "0.25",
        "--model.n_layers",
        "2",
        "--model.attn_mask_type",
        "block_causal",
        "--debug.seed",
        "7",
        "--parallelism.module_fqns_per_model_part",
        "[[\"tok_embeddings\", \"layers.0\"], [\"layers.1\"]]",
        "--activation_checkpoint.selective_ac_option",
        "op",
        "--optimizer.lr",
        "3e-4",
    ];
    let mut configs = vec![run(&overrides), JobConfig::default()];
    for file in committed_configs() {
        configs.push(run(&["--config", &file.to_string_lossy()]));
    }
    for config in configs {
        let text = config.to_toml_string().unwrap_or_else(|e| panic!("{e}"));
        let again = JobConfig::from_toml_str(&text, "printed config")
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(again, config, "{text}");
    }
}

#[test]
fn saves_into_the_dump_folder() {
    let scratch = Scratch::new("save");
    let dir = scratch.dir.clone();
    let dump = dir.to_string_lossy();
    let config = run(&["--job.dump_folder", &dump, "--training.steps", "9"]);
    let path = config
        .save_to_dump_folder()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(path, dir.join("config.toml"));
    let reloaded = JobConfig::load(Some(&path), &[] as &[&str]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reloaded, config);

    let json = run(&[
        "--job.dump_folder",
        &dump,
        "--job.save_config_file",
        "cfg/job.json",
    ]);
    let path = json.save_to_dump_folder().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(path, dir.join("cfg/job.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(value["training"]["steps"], serde_json::json!(40));
}

#[test]
fn deprecated_tokenizer_path_becomes_hf_assets_path() {
    let config = run(&["--model.tokenizer_path", "./tok"]);
    assert_eq!(config.model.hf_assets_path.as_deref(), Some("./tok"));
}

/// `TITAN_SHOW_HELP=1 cargo test -p titan-config --test loading show_help -- --nocapture`
#[test]
fn show_help() {
    if std::env::var_os("TITAN_SHOW_HELP").is_some() {
        println!("{}", titan_config::help_text());
    }
}

#[test]
fn syntax_errors_name_the_file_and_line() {
    let scratch = Scratch::new("syntax");
    let path = scratch.toml("[training]\nsteps = = 5\n");
    let message = error(&["--config", &path.to_string_lossy()]).to_string();
    assert!(
        message.starts_with(&format!("invalid TOML in {}: ", path.display())),
        "{message}"
    );
    if std::env::var_os("TITAN_SHOW_HELP").is_some() {
        println!("{message}");
    }
    assert!(message.contains("line 2"), "{message}");
    let missing = error(&["--config", "/nonexistent/titan.toml"]).to_string();
    assert!(
        missing.contains("cannot read config file /nonexistent/titan.toml"),
        "{missing}"
    );
}

#[test]
fn integers_are_accepted_for_float_options() {
    let scratch = Scratch::new("int-float");
    let path = scratch.toml("[optimizer]\nlr = 1\nweight_decay = 0\n");
    let config = run(&[
        "--config",
        &path.to_string_lossy(),
        "--training.max_norm",
        "2",
    ]);
    assert_eq!(config.optimizer.lr, 1.0);
    assert_eq!(config.optimizer.weight_decay, 0.0);
    assert_eq!(config.training.max_norm, 2.0);
}

#[test]
fn ignored_settings_of_the_debug_file_are_reported() {
    let path = configs_dir().join("llama3_debugmodel.toml");
    let config = run(&["--config", &path.to_string_lossy()]);
    let keys: Vec<String> = config
        .ignored_settings()
        .into_iter()
        .map(|s| s.key)
        .collect();
    for key in [
        "profiling.save_traces_folder",
        "parallelism.pipeline_parallel_schedule",
        "quantize.linear.float8.filter_fqns",
    ] {
        assert!(keys.iter().any(|k| k == key), "{key} not in {keys:?}");
    }
}

#[test]
fn torchtitan_0_1_names_point_to_their_0_2_2_names() {
    let scratch = Scratch::new("renamed");
    let path = scratch.toml("[float8]\nemulate = true\n");
    match error(&["--config", &path.to_string_lossy()]) {
        Error::UnknownSection { suggestion, .. } => {
            assert_eq!(suggestion.as_deref(), Some("quantize.linear.float8"))
        }
        other => panic!("{other}"),
    }
    let message = error(&["--training.compile"]).to_string();
    assert!(
        message.contains("did you mean `--compile.enable`?"),
        "{message}"
    );
}
