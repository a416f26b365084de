//! `--help` text and the Markdown option reference, both generated from the schema.

use std::fmt::Write;

use crate::schema::{lookup, schema, OptionSpec};
use crate::sections::JobConfig;
use crate::support::{titan_note, Accepted, IGNORED, UNSUPPORTED};

const USAGE: &str = "\
Usage: [--job.config_file PATH | --config PATH] [--section.option VALUE]...

Configuration layers, later wins: torchtitan 0.2.2 defaults < TOML file < command line.
Without a config file, Titan's embedded default (configs/titan_default.toml) is the file layer.

  --section.option VALUE | --section.option=VALUE   set an option
  --section.flag | --section.no-flag                set a bool option to true | false
  --section.option a,b,c                            set a list[str] option
  --section.option none                             unset an optional (`| None`) option
  --job.print_config                                print the merged config as TOML
  --help                                            this text

(Titan) marks Titan-only options. (Titan: default only) and (Titan: only ...) mark options
whose other values Titan refuses until the feature is built; (Titan: no effect) marks options
Titan accepts and ignores. `default run: X` is the value of Titan's embedded default file
where it differs from the default.";

/// `, default run: X` when Titan's embedded default file sets another value than the default.
fn default_run_note(option: &OptionSpec, default_run: Option<&toml::Value>) -> String {
    let value = default_run.and_then(|root| lookup(root, &option.key));
    match value.map(toml::Value::to_string) {
        Some(value) if value != option.default => format!(", default run: {value}"),
        _ => String::new(),
    }
}

fn option_line(option: &OptionSpec, default_run: Option<&toml::Value>) -> String {
    let note = titan_note(&option.key)
        .map(|note| format!(" ({note})"))
        .unwrap_or_default();
    format!(
        "  --{}  {}  (default: {}{}){note}\n      {}\n",
        option.key,
        option.type_name,
        option.default,
        default_run_note(option, default_run),
        option.summary()
    )
}

/// The `--help` text: usage, then every option with its type, default and doc, by section.
pub fn help_text() -> String {
    let schema = schema();
    let default_run = toml::Value::try_from(JobConfig::embedded_default()).ok();
    let mut text = String::from(USAGE);
    text.push('\n');
    for section in &schema.sections {
        let options: Vec<_> = schema.options_in(&section.path).collect();
        if options.is_empty() {
            continue;
        }
        let _ = write!(text, "\n[{}]  {}\n", section.path, section.summary());
        for option in options {
            text.push_str(&option_line(option, default_run.as_ref()));
        }
    }
    text
}

fn escape_cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// Markdown reference: what Titan refuses or ignores, then every option by section (the
/// generated part of `docs/configuration.md`).
pub fn markdown_reference() -> String {
    let schema = schema();
    let mut text = String::from(
        "\n### Not supported yet\n\nRefused by `JobConfig::check_supported` when set to another value.\n\n\
         | option | Titan accepts | why |\n|---|---|---|\n",
    );
    for rule in UNSUPPORTED {
        let accepted = match rule.accepted {
            Accepted::DefaultOnly => schema.option(rule.key).map_or_else(String::new, |o| {
                format!("`{}` (default)", escape_cell(&o.default))
            }),
            Accepted::OneOf(values) => values
                .iter()
                .map(|v| format!("`{v}`"))
                .collect::<Vec<_>>()
                .join(", "),
        };
        let _ = writeln!(
            text,
            "| `{}` | {accepted} | {} |",
            rule.key,
            escape_cell(rule.why)
        );
    }
    text.push_str(
        "\n### Accepted without effect\n\nListed by `JobConfig::ignored_settings` when set to another value.\n\n\
         | option | why |\n|---|---|\n",
    );
    for (key, why) in IGNORED {
        let shown = if schema.option(key).is_some() {
            format!("`{key}`")
        } else {
            format!("`{key}.*`")
        };
        let _ = writeln!(text, "| {shown} | {} |", escape_cell(why));
    }
    text.push_str("\n### Options\n");
    for section in &schema.sections {
        let options: Vec<_> = schema.options_in(&section.path).collect();
        if options.is_empty() {
            continue;
        }
        let _ = write!(
            text,
            "\n#### `[{}]`\n\n{}\n\n| option | type | default | description |\n|---|---|---|---|\n",
            section.path,
            section.summary()
        );
        for option in options {
            let note = titan_note(&option.key)
                .map(|note| format!(" *({note})*"))
                .unwrap_or_default();
            let _ = writeln!(
                text,
                "| `{}` | `{}` | `{}` | {}{note} |",
                option.name(),
                escape_cell(&option.type_name),
                escape_cell(&option.default),
                escape_cell(&option.summary())
            );
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_lists_every_option_with_type_and_default() {
        let text = help_text();
        for option in &schema().options {
            let line = format!(
                "  --{}  {}  (default: {}",
                option.key, option.type_name, option.default
            );
            assert!(text.contains(&line), "missing: {line}");
            assert!(
                text.contains(&option.summary()),
                "missing doc of {}",
                option.key
            );
        }
        assert!(text.contains("[quantize.linear.float8]"));
    }
}
