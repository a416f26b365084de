//! The crate's one error type. Every message names the key, the value, where it was set and
//! what to do about it.

use std::fmt;
use std::path::PathBuf;

/// Where a setting came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A TOML file on disk, with the line of the offending key when it could be found.
    File { path: PathBuf, line: Option<usize> },
    /// Titan's embedded default configuration (`configs/titan_default.toml`).
    Embedded { line: Option<usize> },
    /// TOML text handed over by the caller, named by it.
    Text { name: String, line: Option<usize> },
    /// The command line.
    CommandLine,
    /// The built-in defaults (torchtitan 0.2.2's `JobConfig` defaults).
    Defaults,
}

impl Origin {
    /// The same origin pointing at `line`.
    pub(crate) fn at_line(&self, line: Option<usize>) -> Origin {
        match self {
            Origin::File { path, .. } => Origin::File {
                path: path.clone(),
                line,
            },
            Origin::Embedded { .. } => Origin::Embedded { line },
            Origin::Text { name, .. } => Origin::Text {
                name: name.clone(),
                line,
            },
            other => other.clone(),
        }
    }
}

fn with_line(f: &mut fmt::Formatter<'_>, what: &str, line: Option<usize>) -> fmt::Result {
    match line {
        Some(line) => write!(f, "in {what}:{line}"),
        None => write!(f, "in {what}"),
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line } => with_line(f, &path.display().to_string(), *line),
            Origin::Embedded { line } => {
                with_line(f, "the embedded configs/titan_default.toml", *line)
            }
            Origin::Text { name, line } => with_line(f, name, *line),
            Origin::CommandLine => write!(f, "on the command line"),
            Origin::Defaults => write!(f, "in the defaults"),
        }
    }
}

/// A value that parsed but is not acceptable (out of range, inconsistent with another option).
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// Dotted option key, e.g. `training.seq_len`.
    pub key: String,
    /// The offending value as TOML would write it.
    pub value: String,
    /// What is wrong and what is allowed.
    pub reason: String,
    /// Where the value was set, when known (filled in by the loader).
    pub origin: Option<Origin>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{} = {}`", self.key, self.value)?;
        if let Some(origin) = &self.origin {
            write!(f, " ({origin})")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// A setting Titan accepts in a file but cannot honour yet.
#[derive(Debug, Clone, PartialEq)]
pub struct UnsupportedSetting {
    /// Dotted option key.
    pub key: String,
    /// The value that was set, as TOML would write it.
    pub value: String,
    /// Why Titan refuses it, and what it does instead where that applies.
    pub why: &'static str,
}

impl fmt::Display for UnsupportedSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{} = {}` is not supported yet: {}",
            self.key, self.value, self.why
        )
    }
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|item| format!("\n  - {item}"))
        .collect::<String>()
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(s) => format!("; did you mean `{s}`?"),
        None => String::new(),
    }
}

/// Everything that can go wrong while loading, checking or saving a configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // === Reading and writing files ===
    #[error("cannot read config file {path}: {source}; check the path given to --job.config_file")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}; check that job.dump_folder is writable")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid TOML {origin}: {message}")]
    Syntax { origin: Origin, message: String },
    #[error("cannot serialize the configuration: {0}")]
    Serialize(String),

    // === Keys ===
    #[error("unknown section `[{key}]` {origin}{}; `--help` lists every section", did_you_mean(.suggestion))]
    UnknownSection {
        key: String,
        origin: Origin,
        suggestion: Option<String>,
    },
    #[error("unknown option `{key}` {origin}{}; `--help` lists every option", did_you_mean(.suggestion))]
    UnknownOption {
        key: String,
        origin: Origin,
        suggestion: Option<String>,
    },

    // === Values ===
    #[error("wrong type for `{key}` {origin}: got `{value}`, expected {expected}{}", did_you_mean(&.suggestion.map(str::to_string)))]
    WrongType {
        key: &'static str,
        value: String,
        expected: &'static str,
        origin: Origin,
        suggestion: Option<&'static str>,
    },
    #[error(
        "`{key}` is a section {origin}, not an option: write `[{key}]` followed by its options"
    )]
    SectionGivenValue { key: String, origin: Origin },
    #[error("option `--{key}` needs a value of type {expected}, e.g. `--{key} VALUE` or `--{key}=VALUE`")]
    MissingValue {
        key: &'static str,
        expected: &'static str,
    },
    #[error("option `--{key}` is a negated flag and takes no value; write `--{key}` alone")]
    NegatedFlagWithValue { key: String },
    #[error("unexpected argument `{arg}`: options are written `--section.option VALUE`; `--help` lists them")]
    UnexpectedArgument { arg: String },
    #[error("invalid configuration:{}", list(.0))]
    Invalid(Vec<Problem>),
    #[error("this configuration uses features Titan does not support yet:{}\nset these options back to their defaults (`--help` shows them) to train with Titan", list(.0))]
    Unsupported(Vec<UnsupportedSetting>),

    // === Internal ===
    #[error("cannot merge the configuration layers: {0}; this is a Titan bug, please report it")]
    Merge(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
