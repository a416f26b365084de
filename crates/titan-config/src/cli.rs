//! Command-line overrides in torchtitan's syntax.
//!
//! `--section.option VALUE` and `--section.option=VALUE`; booleans are flags (`--x` sets true,
//! `--section.no-x` / `--section.no_x` sets false, `--x=false` also works); `list[str]` takes
//! one comma-separated value; `none` unsets an optional option; dashes in names read as
//! underscores (`--job.config-file`). `--config PATH` is Titan's alias of `--job.config_file`.

use crate::error::{Error, Origin, Result};
use crate::option_type::{CliValue, NONE_WORDS};
use crate::schema::{schema, OptionSpec};
use crate::suggest::{closest, closest_key};

/// One `--key value` from the command line, type-checked against the schema.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Override {
    /// Dotted schema key.
    pub key: String,
    /// The value.
    pub value: CliValue,
}

/// The overrides a command line asks for.
#[derive(Debug, Default)]
pub(crate) struct CommandLine {
    pub overrides: Vec<Override>,
}

impl CommandLine {
    /// The config file named by `--job.config_file` / `--config` (the last one wins).
    pub fn config_file(&self) -> Option<Option<&str>> {
        self.overrides
            .iter()
            .rev()
            .find(|o| o.key == CONFIG_FILE_KEY)
            .map(|o| match &o.value {
                CliValue::Set(value) => value.as_str(),
                CliValue::Unset => None,
            })
    }
}

pub(crate) const CONFIG_FILE_KEY: &str = "job.config_file";

/// Finds the option a flag names: `(spec, negated)`.
fn resolve(name: &str) -> Result<(&'static OptionSpec, bool)> {
    let schema = schema();
    let key = name.replace('-', "_");
    let key = if key == "config" {
        CONFIG_FILE_KEY.to_string()
    } else {
        key
    };
    if let Some(spec) = schema.option(&key) {
        return Ok((spec, false));
    }
    // `--section.no-flag` / `--section.no_flag`.
    let (section, leaf) = key.rsplit_once('.').unwrap_or(("", &key));
    if let Some(positive) = leaf.strip_prefix("no_") {
        let positive_key = crate::schema::join_key(section, positive);
        if let Some(spec) = schema.option(&positive_key).filter(|s| s.is_flag) {
            return Ok((spec, true));
        }
    }
    Err(Error::UnknownOption {
        suggestion: closest_key(&key, schema.options.iter().map(|o| o.key.as_str()))
            .map(|s| format!("--{s}")),
        key,
        origin: Origin::CommandLine,
    })
}

/// The type error for `text` given to `spec`, with a suggestion for misspelled choices.
pub(crate) fn wrong_type(spec: &'static OptionSpec, value: String, origin: Origin) -> Error {
    let bare = value.trim_matches('"');
    let suggestion = closest(bare, spec.choices.iter().copied()).filter(|c| *c != bare);
    Error::WrongType {
        key: &spec.key,
        value,
        expected: &spec.type_name,
        origin,
        suggestion,
    }
}

fn is_bool_word(text: &str) -> bool {
    matches!(text.to_ascii_lowercase().as_str(), "true" | "false") || (NONE_WORDS.contains(&text))
}

/// Parses arguments (without the program name).
pub(crate) fn parse<S: AsRef<str>>(args: &[S]) -> Result<CommandLine> {
    let mut command_line = CommandLine::default();
    let mut args = args.iter().map(AsRef::as_ref).peekable();
    while let Some(arg) = args.next() {
        let Some(body) = arg.strip_prefix("--") else {
            return Err(Error::UnexpectedArgument {
                arg: arg.to_string(),
            });
        };
        let (name, inline) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (body, None),
        };
        let (spec, negated) = resolve(name)?;
        let text = if negated {
            if inline.is_some() {
                return Err(Error::NegatedFlagWithValue {
                    key: name.to_string(),
                });
            }
            "false"
        } else if let Some(text) = inline {
            text
        } else if spec.is_flag {
            // A bare flag sets true; an explicit following true/false (or none) is taken too.
            match args.peek() {
                Some(next) if is_bool_word(next) => args.next().unwrap_or("true"),
                _ => "true",
            }
        } else {
            match args.next() {
                Some(next) if !next.starts_with("--") => next,
                _ => {
                    return Err(Error::MissingValue {
                        key: &spec.key,
                        expected: &spec.type_name,
                    })
                }
            }
        };
        let value = spec
            .value_from_cli(text)
            .ok_or_else(|| wrong_type(spec, text.to_string(), Origin::CommandLine))?;
        command_line.overrides.push(Override {
            key: spec.key.clone(),
            value,
        });
    }
    Ok(command_line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overrides(args: &[&str]) -> Vec<(String, CliValue)> {
        parse(args)
            .map(|c| c.overrides.into_iter().map(|o| (o.key, o.value)).collect())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn space_and_equals_forms_agree() {
        let spaced = overrides(&["--training.steps", "7"]);
        let joined = overrides(&["--training.steps=7"]);
        assert_eq!(spaced, joined);
        assert_eq!(spaced[0].1, CliValue::Set(toml::Value::Integer(7)));
    }

    #[test]
    fn flags_and_negations() {
        let got = overrides(&[
            "--checkpoint.enable",
            "--checkpoint.no-initial_load_model_only",
            "--metrics.no_enable_plot",
            "--compile.enable=false",
            "--debug.deterministic",
            "true",
        ]);
        let values: Vec<_> = got.iter().map(|(_, v)| v.clone()).collect();
        let t = CliValue::Set(toml::Value::Boolean(true));
        let f = CliValue::Set(toml::Value::Boolean(false));
        assert_eq!(values, vec![t.clone(), f.clone(), f.clone(), f, t]);
        assert_eq!(got[1].0, "checkpoint.initial_load_model_only");
    }

    #[test]
    fn kebab_case_and_alias() {
        let got = overrides(&["--job.config-file", "a.toml", "--config=b.toml"]);
        assert!(got.iter().all(|(k, _)| k == CONFIG_FILE_KEY));
        let command_line = parse(&["--config", "b.toml"]).unwrap_or_default();
        assert_eq!(command_line.config_file(), Some(Some("b.toml")));
    }

    #[test]
    fn lists_split_on_commas() {
        let got = overrides(&["--model.converters", "a, b,c"]);
        let expected: Vec<toml::Value> = ["a", "b", "c"]
            .iter()
            .map(|s| toml::Value::String(s.to_string()))
            .collect();
        assert_eq!(got[0].1, CliValue::Set(toml::Value::Array(expected)));
    }

    #[test]
    fn none_unsets_optional_options() {
        let got = overrides(&["--lr_scheduler.decay_ratio", "none"]);
        assert_eq!(got[0].1, CliValue::Unset);
    }

    #[test]
    fn errors_name_the_problem() {
        let missing = parse(&["--training.steps"]).map(|_| ());
        assert!(matches!(missing, Err(Error::MissingValue { .. })));
        let stray = parse(&["steps"]).map(|_| ());
        assert!(matches!(stray, Err(Error::UnexpectedArgument { .. })));
        let negated = parse(&["--compile.no-enable=true"]).map(|_| ());
        assert!(matches!(negated, Err(Error::NegatedFlagWithValue { .. })));
    }
}
