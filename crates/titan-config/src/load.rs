//! Layering: torchtitan defaults < TOML file < command line, merged with figment.
//!
//! Each layer is checked against the schema before merging (unknown sections and options,
//! wrong types), so errors name the key, the value, the file and line, and a close valid key.

use std::path::{Path, PathBuf};

use figment::value::{Dict, Empty, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use crate::cli::{wrong_type, Override};
use crate::error::{Error, Origin, Result};
use crate::option_type::CliValue;
use crate::schema::{join_key, schema};
use crate::sections::JobConfig;
use crate::suggest::closest_key;

/// Titan's default run, committed as `configs/titan_default.toml`.
pub(crate) const EMBEDDED_DEFAULT: &str = include_str!("../configs/titan_default.toml");

/// The TOML layer: a file, the embedded default, or caller-provided text.
pub(crate) struct TomlSource {
    pub text: String,
    pub origin: Origin,
}

impl TomlSource {
    pub fn file(path: &Path) -> Result<TomlSource> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(TomlSource {
            text,
            origin: Origin::File {
                path: path.to_path_buf(),
                line: None,
            },
        })
    }

    pub fn embedded() -> TomlSource {
        TomlSource {
            text: EMBEDDED_DEFAULT.to_string(),
            origin: Origin::Embedded { line: None },
        }
    }

    pub fn text(text: &str, name: &str) -> TomlSource {
        TomlSource {
            text: text.to_string(),
            origin: Origin::Text {
                name: name.to_string(),
                line: None,
            },
        }
    }

    /// Parses the text and checks every key and value against the schema.
    fn checked_table(&self) -> Result<toml::Table> {
        let table: toml::Table = self
            .text
            .parse()
            .map_err(|e: toml::de::Error| Error::Syntax {
                origin: self.origin.clone(),
                message: e.to_string().trim_end().replace('\n', "\n    "),
            })?;
        self.check_table(&table, "")?;
        Ok(table)
    }

    fn origin_of(&self, key: &str) -> Origin {
        self.origin.at_line(locate_line(&self.text, key))
    }

    fn check_table(&self, table: &toml::Table, prefix: &str) -> Result<()> {
        let schema = schema();
        for (name, value) in table {
            let key = join_key(prefix, name);
            if let Some(spec) = schema.option(&key) {
                if !spec.accepts(value) {
                    return Err(wrong_type(spec, value.to_string(), self.origin_of(&key)));
                }
            } else if schema.section(&key).is_some() {
                match value {
                    toml::Value::Table(inner) => self.check_table(inner, &key)?,
                    _ => {
                        return Err(Error::SectionGivenValue {
                            origin: self.origin_of(&key),
                            key,
                        })
                    }
                }
            } else if value.is_table() {
                let sections = schema.sections.iter().map(|s| s.path.as_str());
                return Err(Error::UnknownSection {
                    suggestion: closest_key(&key, sections).map(str::to_string),
                    origin: self.origin_of(&key),
                    key,
                });
            } else {
                let keys = schema.options.iter().map(|o| o.key.as_str());
                return Err(Error::UnknownOption {
                    suggestion: closest_key(&key, keys).map(str::to_string),
                    origin: self.origin_of(&key),
                    key,
                });
            }
        }
        Ok(())
    }
}

/// Best-effort line (1-based) of a dotted key or `[section]` header in TOML text, for messages.
pub(crate) fn locate_line(text: &str, key: &str) -> Option<usize> {
    fn normalize(path: &str) -> String {
        path.split('.')
            .map(|part| part.trim().trim_matches('"').trim_matches('\''))
            .collect::<Vec<_>>()
            .join(".")
    }
    let mut table = String::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with("[[") {
            continue;
        }
        if let Some(header) = line.strip_prefix('[') {
            let header = header.split(']').next().unwrap_or("");
            table = normalize(header);
            if table == key {
                return Some(index + 1);
            }
        } else if let Some((lhs, _)) = line.split_once('=') {
            if lhs.trim_start().starts_with('#') {
                continue;
            }
            if join_key(&table, &normalize(lhs)) == key {
                return Some(index + 1);
            }
        }
    }
    None
}

/// A named figment layer holding already-checked values.
struct Layer {
    name: String,
    dict: Dict,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name.clone())
    }

    fn data(&self) -> std::result::Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

fn to_dict<T: serde::Serialize>(value: &T) -> Result<Dict> {
    match Value::serialize(value) {
        Ok(Value::Dict(_, dict)) => Ok(dict),
        Ok(other) => Err(Error::Merge(format!("expected a table, got {other:?}"))),
        Err(e) => Err(Error::Merge(e.to_string())),
    }
}

/// Inserts `value` at a dotted key, creating the intermediate tables.
fn insert(dict: &mut Dict, key: &str, value: Value) {
    match key.split_once('.') {
        None => {
            dict.insert(key.to_string(), value);
        }
        Some((head, rest)) => {
            let entry = dict
                .entry(head.to_string())
                .or_insert_with(|| Value::from(Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert(inner, rest, value);
            }
        }
    }
}

fn overrides_dict(overrides: &[Override]) -> Result<Dict> {
    let mut dict = Dict::new();
    for o in overrides {
        let value = match &o.value {
            CliValue::Set(v) => Value::serialize(v).map_err(|e| Error::Merge(e.to_string()))?,
            CliValue::Unset => Value::from(Empty::None),
        };
        insert(&mut dict, &o.key, value);
    }
    Ok(dict)
}

const DEFAULTS_LAYER: &str = "defaults";
const COMMAND_LINE_LAYER: &str = "command line";

/// Merges defaults < `source` < `overrides`, then applies aliases and validates values.
pub(crate) fn load_layers(source: &TomlSource, overrides: &[Override]) -> Result<JobConfig> {
    let table = source.checked_table()?;
    let source_name = source.origin.to_string();
    let figment = Figment::new()
        .merge(Layer {
            name: DEFAULTS_LAYER.into(),
            dict: to_dict(&JobConfig::default())?,
        })
        .merge(Layer {
            name: source_name.clone(),
            dict: to_dict(&table)?,
        })
        .merge(Layer {
            name: COMMAND_LINE_LAYER.into(),
            dict: overrides_dict(overrides)?,
        });
    let mut config: JobConfig = figment.extract().map_err(|e| Error::Merge(e.to_string()))?;
    apply_deprecated_aliases(&mut config);

    if let Err(Error::Invalid(mut problems)) = config.validate() {
        for problem in &mut problems {
            problem.origin = Some(
                match figment.find_metadata(&problem.key).map(|m| m.name.as_ref()) {
                    Some(COMMAND_LINE_LAYER) => Origin::CommandLine,
                    Some(name) if name == source_name => source.origin_of(&problem.key),
                    _ => Origin::Defaults,
                },
            );
        }
        return Err(Error::Invalid(problems));
    }
    Ok(config)
}

/// torchtitan 0.2.2 copies `model.tokenizer_path` into `model.hf_assets_path`, with a warning.
fn apply_deprecated_aliases(config: &mut JobConfig) {
    if let Some(path) = &config.model.tokenizer_path {
        tracing::warn!(
            "model.tokenizer_path is deprecated, use model.hf_assets_path instead; \
             setting hf_assets_path to {path:?}"
        );
        config.model.hf_assets_path = Some(path.clone());
    }
}

/// The config file the command line names, or the embedded default when it names none.
pub(crate) fn source_for(config_file: Option<Option<&str>>) -> Result<TomlSource> {
    match config_file {
        Some(Some(path)) => TomlSource::file(&PathBuf::from(path)),
        _ => Ok(TomlSource::embedded()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_keys_and_headers() {
        let text = "# c\n[job]\ndump_folder = \"x\"\n\n[training]\n  steps = 5 # n\n[quantize.linear.float8]\nemulate = true\n";
        assert_eq!(locate_line(text, "training"), Some(5));
        assert_eq!(locate_line(text, "training.steps"), Some(6));
        assert_eq!(locate_line(text, "quantize.linear.float8.emulate"), Some(8));
        assert_eq!(locate_line(text, "training.seq_len"), None);
    }

    #[test]
    fn insert_builds_nested_tables() {
        let mut dict = Dict::new();
        insert(&mut dict, "a.b.c", Value::from(1));
        insert(&mut dict, "a.d", Value::from(2));
        let a = dict.get("a").and_then(|v| v.as_dict());
        assert_eq!(a.map(|a| a.len()), Some(2));
    }
}
