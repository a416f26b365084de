//! `cargo xtask bench [gpu]`: build the CUDA bench and run torchtitan's anchor shapes.
//!
//! Builds with scripts/build-cuda.sh (only the `bench` binary unless `TITAN_CUDA_BINS` says
//! otherwise), then, if `nvidia-smi -L` finds a GPU, runs the bench program at each chosen
//! shape with `--ops` and prints a summary next to torchtitan's anchors. Without a GPU it
//! prints how to run the same thing on the GPU machine with scripts/gpu-session.sh.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const USAGE: &str = "usage: cargo xtask bench [gpu] [--shape 1b|8b-2l|all] [--build-only] [--no-build] [--] [bench args...]

  Builds the CUDA bench binary (scripts/build-cuda.sh) and, when `nvidia-smi -L` finds a GPU,
  runs torchtitan's anchor shapes with the per-op table (--ops):
    1b     bench --flavor 1B --batch 4 --seq 2048 --steps 20 --ops
    8b-2l  bench --flavor 8B --n-layers 2 --batch 1 --seq 8192 --steps 20 --ops
  A run that goes out of memory is retried with --ac full (unless --ac was given).
  Other arguments go to the bench program (e.g. --fused off, --steps 30, --ac full).
  Without a GPU it prints how to run the same on a GPU machine (scripts/gpu-session.sh).";

/// One benchmark shape.
#[derive(Debug)]
struct Shape {
    name: &'static str,
    session_target: &'static str,
    args: &'static [&'static str],
    /// torchtitan eager on the same card (docs/benchmarks.md, shared/reference/anchors.md).
    anchor: &'static str,
}

const SHAPES: &[Shape] = &[
    Shape {
        name: "1b",
        session_target: "bench1b",
        args: &[
            "--flavor", "1B", "--batch", "4", "--seq", "2048", "--steps", "20",
        ],
        anchor: "42,785 tok/s, 35.6% MFU, 46.7 GiB",
    },
    Shape {
        name: "8b-2l",
        session_target: "bench8b",
        args: &[
            "--flavor",
            "8B",
            "--n-layers",
            "2",
            "--batch",
            "1",
            "--seq",
            "8192",
            "--steps",
            "20",
        ],
        anchor: "61,098 tok/s, 40.6% MFU, 36.2 GiB",
    },
];

#[derive(Debug)]
struct Opts {
    shapes: Vec<&'static Shape>,
    build: bool,
    run: bool,
    extra: Vec<String>,
}

fn parse(args: &[String]) -> Result<Option<Opts>, String> {
    let mut o = Opts {
        shapes: SHAPES.iter().collect(),
        build: true,
        run: true,
        extra: Vec::new(),
    };
    let mut i = 0;
    if args.first().map(String::as_str) == Some("gpu") {
        i = 1;
    }
    while i < args.len() {
        let a = args[i].as_str();
        match a {
            "-h" | "--help" => return Ok(None),
            "--build-only" => o.run = false,
            "--no-build" => o.build = false,
            "--shape" => {
                i += 1;
                let v = args
                    .get(i)
                    .ok_or("--shape needs 1b, 8b-2l or all".to_string())?;
                o.shapes = shapes_named(v)?;
            }
            _ if a.starts_with("--shape=") => o.shapes = shapes_named(&a["--shape=".len()..])?,
            "--" => {
                o.extra.extend(args[i + 1..].iter().cloned());
                break;
            }
            _ => o.extra.push(args[i].clone()),
        }
        i += 1;
    }
    if !o.build && !o.run {
        return Err("--build-only and --no-build leave nothing to do".into());
    }
    Ok(Some(o))
}

fn shapes_named(v: &str) -> Result<Vec<&'static Shape>, String> {
    match v {
        "all" => Ok(SHAPES.iter().collect()),
        _ => SHAPES
            .iter()
            .find(|s| s.name == v)
            .map(|s| vec![s])
            .ok_or_else(|| format!("--shape {v}: expected 1b, 8b-2l or all")),
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `cargo xtask bench [gpu] ...`.
pub fn bench_gpu_cmd(args: &[String]) -> Result<(), String> {
    let Some(o) = parse(args)? else {
        println!("{USAGE}");
        return Ok(());
    };
    let root = root();
    if o.build {
        build(&root)?;
    }
    if !o.run {
        print_carry_instructions(&o);
        return Ok(());
    }
    if !gpu_visible() {
        println!("\nno GPU here (`nvidia-smi -L` failed or is missing): nothing run.");
        print_carry_instructions(&o);
        return Ok(());
    }
    let bench = bench_binary(&root)?;
    let mut results = Vec::new();
    for shape in &o.shapes {
        results.push((shape, run_shape(&root, &bench, shape, &o.extra)?));
    }
    println!("\n=== cargo xtask bench: summary ===");
    println!(
        "| shape | tokens/s | TFLOP/s | MFU | peak memory | launch-to-step-1 | torchtitan eager |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (shape, r) in &results {
        println!(
            "| {}{} | {} | {} | {} | {} | {} | {} |",
            shape.name,
            if r.ac_full_retry { " (ac full)" } else { "" },
            r.get("tokens/s"),
            r.get("TFLOP/s"),
            r.get("MFU"),
            r.get("peak memory"),
            r.get("launch-to-step-1"),
            shape.anchor
        );
    }
    if results.iter().any(|(_, r)| r.failed) {
        return Err("a benchmark run failed (its output is above)".into());
    }
    Ok(())
}

fn build(root: &Path) -> Result<(), String> {
    let mut cmd = Command::new("bash");
    cmd.arg(root.join("scripts/build-cuda.sh"))
        .current_dir(root);
    if std::env::var_os("TITAN_CUDA_BINS").is_none() {
        cmd.env("TITAN_CUDA_BINS", "bench");
    }
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run scripts/build-cuda.sh: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("scripts/build-cuda.sh failed ({status})"))
    }
}

fn gpu_visible() -> bool {
    Command::new("nvidia-smi")
        .arg("-L")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The stripped CUDA bench binary: .device/bin/bench, or unpacked from .device/pack/bench.gz
/// (what a carried pack holds).
fn bench_binary(root: &Path) -> Result<PathBuf, String> {
    let bin = root.join(".device/bin/bench");
    if bin.is_file() {
        return Ok(bin);
    }
    let packed = root.join(".device/pack/bench.gz");
    if !packed.is_file() {
        return Err(format!(
            "no CUDA bench binary: neither {} nor {} exists (build with `cargo xtask bench --build-only`)",
            bin.display(),
            packed.display()
        ));
    }
    let out = std::env::temp_dir().join("titan-bench");
    let status = Command::new("bash")
        .arg("-c")
        .arg(r#"gunzip -c "$1" > "$2" && chmod +x "$2""#)
        .arg("unpack")
        .arg(&packed)
        .arg(&out)
        .status()
        .map_err(|e| format!("cannot unpack {}: {e}", packed.display()))?;
    if !status.success() {
        return Err(format!("unpacking {} failed ({status})", packed.display()));
    }
    Ok(out)
}

/// The summary lines of one bench run.
#[derive(Default)]
struct RunResult {
    lines: Vec<String>,
    failed: bool,
    ac_full_retry: bool,
}

impl RunResult {
    /// The value after `key` on the bench summary line that starts with it.
    fn get(&self, key: &str) -> String {
        self.lines
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| "-".into())
    }
}

fn run_shape(
    root: &Path,
    bench: &Path,
    shape: &Shape,
    extra: &[String],
) -> Result<RunResult, String> {
    let mut args: Vec<String> = shape.args.iter().map(|s| s.to_string()).collect();
    args.push("--ops".into());
    args.extend(extra.iter().cloned());
    let mut r = run_bench(root, bench, shape.name, &args)?;
    let oom = r
        .lines
        .iter()
        .any(|l| l.to_lowercase().contains("out of memory"));
    if r.failed && oom && !extra.iter().any(|a| a == "--ac") {
        println!("\n{}: out of memory; again with --ac full", shape.name);
        args.extend(["--ac".to_string(), "full".to_string()]);
        r = run_bench(root, bench, shape.name, &args)?;
        r.ac_full_retry = true;
    }
    Ok(r)
}

/// Run the bench with the device environment (CUDA/NCCL library links), echoing its output.
fn run_bench(root: &Path, bench: &Path, name: &str, args: &[String]) -> Result<RunResult, String> {
    println!("\n=== {name}: bench {}", args.join(" "));
    let env_script = root.join("scripts/device-env.sh");
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(
            r#"env_script=$1; shift; [ -f "$env_script" ] && source "$env_script"; exec "$@" 2>&1"#,
        )
        .arg("bench-run")
        .arg(&env_script)
        .arg(bench)
        .args(args)
        .current_dir(root)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bench.display()))?;
    let mut r = RunResult::default();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line.map_err(|e| format!("reading the bench output: {e}"))?;
            println!("{line}");
            r.lines.push(line);
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for the bench: {e}"))?;
    r.failed = !status.success();
    if r.failed {
        println!("=== {name}: bench failed ({status})");
    }
    Ok(r)
}

fn print_carry_instructions(o: &Opts) {
    let targets: Vec<&str> = o.shapes.iter().map(|s| s.session_target).collect();
    let targets = targets.join(" ");
    let extra = if o.extra.is_empty() {
        String::new()
    } else {
        format!("BENCH_ARGS=\"{}\" ", o.extra.join(" "))
    };
    println!(
        "
To run the benchmark on a GPU machine (Linux x86-64 with an NVIDIA driver; the CUDA 13
libraries are found in /usr/local/cuda or torch's nvidia wheels by scripts/device-env.sh):

  1. Carry the packed binaries and the scripts to the repository root there:
       .device/pack/          (bench.gz and any other gzipped binary built here)
       .device/device-env.sh
       scripts/gpu-session.sh scripts/top-kernels.sh
     With the device tool: run from this checkout with
       carry: [\".device/pack\", \".device/device-env.sh\"]
     (tracked scripts travel with the working tree).
  2. Run, from the repository root on that machine:
       {extra}bash scripts/gpu-session.sh {targets}
     Logs land in $OUT (default outputs/gpu-session): bench_1b.log, bench_8b2l.log, each
     with the per-op table (--ops); the summary lines are the last ones printed.
     Optional: `bash scripts/top-kernels.sh 1b` (Nsight Compute per-kernel table),
     `bash scripts/gpu-session.sh init1b` (launch-time breakdown: bench --init-only).
  One device call may run at most 600 s: one or two targets per call."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn options_and_pass_through() {
        let o = parse(&s(&[
            "gpu",
            "--shape",
            "1b",
            "--no-build",
            "--fused",
            "off",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(o.shapes.len(), 1);
        assert_eq!(o.shapes[0].name, "1b");
        assert!(!o.build && o.run);
        assert_eq!(o.extra, s(&["--fused", "off"]));
        let o = parse(&s(&["--shape=all", "--build-only", "--", "--shape", "x"]))
            .unwrap()
            .unwrap();
        assert_eq!(o.shapes.len(), 2);
        assert!(o.build && !o.run);
        assert_eq!(o.extra, s(&["--shape", "x"]));
        assert!(parse(&s(&["--shape", "3b"])).is_err());
        assert!(parse(&s(&["--build-only", "--no-build"])).is_err());
        assert!(parse(&s(&["--help"])).unwrap().is_none());
    }

    #[test]
    fn summary_values_come_from_the_last_matching_line() {
        let r = RunResult {
            lines: s(&[
                "tokens/s        2812",
                "MFU             2.3% (of 989 TFLOP/s)",
                "launch-to-step-1 80.6 s",
            ]),
            ..RunResult::default()
        };
        assert_eq!(r.get("tokens/s"), "2812");
        assert_eq!(r.get("MFU"), "2.3% (of 989 TFLOP/s)");
        assert_eq!(r.get("launch-to-step-1"), "80.6 s");
        assert_eq!(r.get("TFLOP/s"), "-");
    }
}
