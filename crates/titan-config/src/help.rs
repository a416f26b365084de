//! `--help` text and the Markdown option reference, both generated from the schema.

use std::fmt::Write;

use crate::schema::{schema, OptionSpec};
use crate::support::is_restricted;

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

[Titan] marks Titan-only options; (Titan: default only) marks options whose other values
Titan refuses until the feature is built.";

fn option_line(option: &OptionSpec) -> String {
    let restricted = if is_restricted(&option.key) {
        " (Titan: default only)"
    } else {
        ""
    };
    format!(
        "  --{}  {}  (default: {}){restricted}\n      {}\n",
        option.key,
        option.type_name,
        option.default,
        option.summary()
    )
}

/// The `--help` text: usage, then every option with its type, default and doc, by section.
pub fn help_text() -> String {
    let schema = schema();
    let mut text = String::from(USAGE);
    text.push('\n');
    for section in &schema.sections {
        let options: Vec<_> = schema.options_in(&section.path).collect();
        if options.is_empty() {
            continue;
        }
        let _ = write!(text, "\n[{}]  {}\n", section.path, section.summary());
        for option in options {
            text.push_str(&option_line(option));
        }
    }
    text
}

fn escape_cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// Markdown tables of every option by section (the generated part of `docs/configuration.md`).
pub fn markdown_reference() -> String {
    let schema = schema();
    let mut text = String::new();
    for section in &schema.sections {
        let options: Vec<_> = schema.options_in(&section.path).collect();
        if options.is_empty() {
            continue;
        }
        let _ = write!(
            text,
            "\n### `[{}]`\n\n{}\n\n| option | type | default | description |\n|---|---|---|---|\n",
            section.path,
            section.summary()
        );
        for option in options {
            let restricted = if is_restricted(&option.key) {
                " *(Titan: default only)*"
            } else {
                ""
            };
            let _ = writeln!(
                text,
                "| `{}` | `{}` | `{}` | {}{restricted} |",
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
                "  --{}  {}  (default: {})",
                option.key, option.type_name, option.default
            );
            assert!(text.contains(&line), "missing: {line}");
            assert!(text.contains(&option.summary()), "missing doc of {}", option.key);
        }
        assert!(text.contains("[quantize.linear.float8]"));
    }
}
