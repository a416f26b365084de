//! `cargo xtask <command>`: Titan's developer commands.
//!
//! - `train [--config FILE] [--section.key value ...]`: train (default: the llama3 debug model
//!   on the embedded corpus, on the CPU). `--help` lists every option.
//! - `convert --from hf|titan --to titan|hf --input DIR --output DIR [--flavor F]`: checkpoint
//!   conversion between Titan and Hugging Face layouts.
//! - `tokenizer`: rebuild the embedded corpus and tokenizer from their npm source.
//! - `bench data`: tokenize+pack throughput on the embedded corpus.

mod convert;
mod data_cmds;

use std::process::ExitCode;

const USAGE: &str = "usage: cargo xtask <command> [args]

commands:
  train [--config FILE] [--section.key value ...]   train (no args: llama3 debugmodel on the embedded corpus, CPU)
  train --help                                      every training option with its type and default
  convert --from hf --to titan --input DIR --output DIR [--flavor F]
  convert --from titan --to hf --input STEP_DIR --output DIR [--flavor F] [--config FILE]
  tokenizer                                         rebuild the embedded corpus and tokenizer (needs npm)
  bench data                                        tokenize+pack throughput on one core";

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    let cmd = args.remove(0);
    let result: Result<(), String> = match cmd.as_str() {
        "train" => {
            let code = titan_trainer::run_main(&titan_trainer::Registry::default(), args);
            return ExitCode::from(code as u8);
        }
        "convert" => convert::convert_cmd(&args),
        "tokenizer" => data_cmds::tokenizer_cmd(&args),
        "bench" => match args.first().map(String::as_str) {
            Some("data") => data_cmds::bench_data_cmd(&args[1..]),
            _ => Err("usage: cargo xtask bench data".into()),
        },
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown command `{other}`\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
