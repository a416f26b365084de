//! Titan's job configuration: torchtitan 0.2.2's `JobConfig` in Rust.
//!
//! This crate owns the option names, types, defaults and docs (one table, [`schema()`]), the
//! loading of TOML files and command-line overrides (defaults < file < command line), value
//! validation, the list of options Titan does not support yet, `--help`, and printing or saving
//! the merged configuration. It knows nothing about models, tensors or training: other crates
//! read the typed sections of [`JobConfig`].
//!
//! ```
//! # fn main() -> titan_config::Result<()> {
//! use titan_config::{parse_args, Invocation};
//!
//! // No config file: Titan's embedded default run, with one override.
//! let Invocation::Run(config) = parse_args(&["--training.steps", "5"])? else {
//!     unreachable!("no --help given");
//! };
//! assert_eq!(config.training.steps, 5);
//! assert_eq!(config.training.dataset, "sotu");
//! config.check_supported()?;
//! # Ok(()) }
//! ```

mod cli;
mod declare;
mod error;
mod help;
mod load;
mod option_type;
mod output;
mod schema;
mod sections;
mod suggest;
mod support;
mod validate;

use std::path::Path;

pub use error::{Error, Origin, Problem, Result, UnsupportedSetting};
pub use help::{help_text, markdown_reference};
pub use option_type::{CliValue, OptionType};
pub use output::DEFAULT_SAVE_NAME;
pub use schema::{schema, OptionSpec, Schema, SectionSpec};
pub use sections::*;
pub use support::{Accepted, IgnoredSetting, SupportRule, IGNORED, UNSUPPORTED};

use load::{load_layers, source_for, TomlSource};

/// What the command line asks for.
#[derive(Debug)]
pub enum Invocation {
    /// Train (or print, or estimate) with this merged, validated configuration.
    Run(Box<JobConfig>),
    /// `--help` was given: print this text and exit.
    Help(String),
}

/// Parses command-line arguments (without the program name): picks the TOML file from
/// `--job.config_file PATH` / `--config PATH` (Titan's embedded default when none), layers
/// defaults < file < overrides, and validates the values. Does not call
/// [`JobConfig::check_supported`]: the trainer does, so that `--job.print_config` and tools
/// can still show configurations Titan cannot train yet.
pub fn parse_args<S: AsRef<str>>(args: &[S]) -> Result<Invocation> {
    // Help wins over everything else, even over arguments that would not parse.
    if args.iter().any(|a| matches!(a.as_ref(), "--help" | "-h")) {
        return Ok(Invocation::Help(help_text()));
    }
    let command_line = cli::parse(args)?;
    let source = source_for(command_line.config_file())?;
    let config = load_layers(&source, &command_line.overrides)?;
    Ok(Invocation::Run(Box::new(config)))
}

impl JobConfig {
    /// Titan's default run (`configs/titan_default.toml`, compiled in): what `cargo xtask train`
    /// trains with no arguments.
    pub fn embedded_default() -> JobConfig {
        // The embedded file is part of the build and a test loads it, so this cannot fail at
        // run time; falling back to torchtitan's defaults keeps it panic-free regardless.
        load_layers(&TomlSource::embedded(), &[]).unwrap_or_else(|e| {
            tracing::error!("embedded configs/titan_default.toml does not load: {e}");
            JobConfig::default()
        })
    }

    /// Loads a TOML file over torchtitan's defaults, then `overrides` in command-line syntax
    /// (`["--training.steps", "5"]`). `file = None` uses Titan's embedded default file.
    pub fn load<S: AsRef<str>>(file: Option<&Path>, overrides: &[S]) -> Result<JobConfig> {
        let command_line = cli::parse(overrides)?;
        let source = match file {
            Some(path) => TomlSource::file(path)?,
            None => source_for(command_line.config_file())?,
        };
        load_layers(&source, &command_line.overrides)
    }

    /// Loads TOML text over torchtitan's defaults; `name` is used in error messages.
    pub fn from_toml_str(text: &str, name: &str) -> Result<JobConfig> {
        load_layers(&TomlSource::text(text, name), &[])
    }
}
