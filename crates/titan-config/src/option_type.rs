//! How each Rust field type reads from the command line, checks a TOML value and names itself
//! in help: the [`OptionType`] trait and its implementations for the types options use.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// How one Rust field type reads from the command line and describes itself.
pub trait OptionType: Serialize + DeserializeOwned {
    /// Type as shown in help and errors, in torchtitan's spelling (`int`, `str | None`, ...).
    fn type_name() -> String;
    /// The allowed values of an enumerated option (empty for free-form types).
    fn choices() -> &'static [&'static str] {
        &[]
    }
    /// Booleans are flags: `--x` sets true, `--no-x` sets false.
    const IS_FLAG: bool = false;
    /// Converts command-line text to the TOML value this type reads; `None` when the text
    /// cannot be read at all. The type check runs afterwards, so this may be lenient.
    fn cli_value(text: &str) -> Option<CliValue>;
}

/// A value given on the command line.
#[derive(Debug, Clone, PartialEq)]
pub enum CliValue {
    /// Set the option to this value.
    Set(toml::Value),
    /// Unset an optional option (`none`).
    Unset,
}

/// Words that unset an optional option on the command line (`--lr_scheduler.decay_ratio none`).
pub(crate) const NONE_WORDS: &[&str] = &["none", "None", "null"];

impl OptionType for bool {
    fn type_name() -> String {
        "bool".into()
    }
    const IS_FLAG: bool = true;
    fn cli_value(text: &str) -> Option<CliValue> {
        match text.to_ascii_lowercase().as_str() {
            "true" => Some(CliValue::Set(toml::Value::Boolean(true))),
            "false" => Some(CliValue::Set(toml::Value::Boolean(false))),
            _ => None,
        }
    }
}

fn integer(text: &str) -> Option<CliValue> {
    text.trim()
        .replace('_', "")
        .parse::<i64>()
        .ok()
        .map(|i| CliValue::Set(toml::Value::Integer(i)))
}

impl OptionType for i64 {
    fn type_name() -> String {
        "int".into()
    }
    fn cli_value(text: &str) -> Option<CliValue> {
        integer(text)
    }
}

impl OptionType for usize {
    fn type_name() -> String {
        "int >= 0".into()
    }
    fn cli_value(text: &str) -> Option<CliValue> {
        integer(text)
    }
}

impl OptionType for u64 {
    fn type_name() -> String {
        "int >= 0".into()
    }
    fn cli_value(text: &str) -> Option<CliValue> {
        integer(text)
    }
}

impl OptionType for f64 {
    fn type_name() -> String {
        "float".into()
    }
    fn cli_value(text: &str) -> Option<CliValue> {
        text.trim()
            .parse::<f64>()
            .ok()
            .map(|x| CliValue::Set(toml::Value::Float(x)))
    }
}

impl OptionType for String {
    fn type_name() -> String {
        "str".into()
    }
    fn cli_value(text: &str) -> Option<CliValue> {
        Some(CliValue::Set(toml::Value::String(text.to_string())))
    }
}

/// torchtitan's `list[str]` options take one comma-separated string on the command line.
impl OptionType for Vec<String> {
    fn type_name() -> String {
        "list[str]".into()
    }
    fn cli_value(text: &str) -> Option<CliValue> {
        let items = text
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| toml::Value::String(item.to_string()))
            .collect();
        Some(CliValue::Set(toml::Value::Array(items)))
    }
}

/// Nested lists have no comma form; the command line takes a TOML array literal
/// (`--parallelism.module_fqns_per_model_part '[["tok_embeddings","layers.0"],["layers.1"]]'`).
impl OptionType for Vec<Vec<String>> {
    fn type_name() -> String {
        "list[list[str]]".into()
    }
    fn cli_value(text: &str) -> Option<CliValue> {
        let table: toml::Table = format!("v = {text}").parse().ok()?;
        table.get("v").cloned().map(CliValue::Set)
    }
}

impl<T: OptionType> OptionType for Option<T> {
    fn type_name() -> String {
        format!("{} | None", T::type_name())
    }
    fn choices() -> &'static [&'static str] {
        T::choices()
    }
    const IS_FLAG: bool = T::IS_FLAG;
    fn cli_value(text: &str) -> Option<CliValue> {
        if NONE_WORDS.contains(&text) {
            return Some(CliValue::Unset);
        }
        T::cli_value(text)
    }
}

/// Whether a TOML value deserializes into `T`: the type check for files and command line alike.
pub(crate) fn accepts<T: OptionType>(value: &toml::Value) -> bool {
    T::deserialize(value.clone()).is_ok()
}
