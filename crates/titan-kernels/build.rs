//! Compiles `kernels/*.cu` to sm_90a cubins with nvcc when feature `cuda` is on (no PTX: the
//! driver's JIT of candle's PTX costs ~20 s at start-up; a cubin loads in milliseconds).
//!
//! nvcc is taken from `NVCC`, then `CUDA_ROOT`/`CUDA_HOME`/`CUDA_PATH` `/bin/nvcc`, then
//! `/usr/local/cuda/bin/nvcc`, then `PATH`. `TITAN_CUDA_ARCH` overrides the target (default
//! `sm_90a`: Hopper with its warpgroup MMA, which the hd-64 attention kernels use; sm_90a code
//! runs on every compute-capability-9.0 GPU). For `sm_90a` the build sets cfg `titan_wgmma`,
//! so the launchers know those kernels are real; for any other target they trap and are never
//! picked.

use std::path::{Path, PathBuf};
use std::process::Command;

fn find_nvcc() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NVCC") {
        return Some(PathBuf::from(p));
    }
    for var in ["CUDA_ROOT", "CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = std::env::var_os(var) {
            let p = Path::new(&root).join("bin").join("nvcc");
            if p.exists() {
                return Some(p);
            }
        }
    }
    let p = PathBuf::from("/usr/local/cuda/bin/nvcc");
    if p.exists() {
        return Some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("nvcc"))
        .find(|p| p.exists())
}

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    for var in [
        "NVCC",
        "CUDA_ROOT",
        "CUDA_HOME",
        "CUDA_PATH",
        "TITAN_CUDA_ARCH",
        "TITAN_NVCC_FLAGS",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rustc-check-cfg=cfg(titan_wgmma)");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let kernels = manifest.join("kernels");
    let Some(nvcc) = find_nvcc() else {
        panic!(
            "titan-kernels (feature `cuda`) needs nvcc to compile its kernels and found none: \
             set NVCC or CUDA_ROOT, install the CUDA toolkit (12.4+ or 13.0), or run \
             `cargo xtask cuda-build`, which installs nvcc 13.0 from NVIDIA's wheels"
        );
    };
    let arch = std::env::var("TITAN_CUDA_ARCH").unwrap_or_else(|_| "sm_90a".into());
    // Architecture-specific targets (sm_90a) need the -gencode form: nvcc 13.0's `-arch=sm_90a`
    // shorthand also runs a plain sm_90 pass, which rejects wgmma.
    let target = match arch.strip_prefix("sm_") {
        Some(cc) if cc.ends_with('a') => format!("-gencode=arch=compute_{cc},code={arch}"),
        _ => format!("-arch={arch}"),
    };
    if arch == "sm_90a" {
        println!("cargo:rustc-cfg=titan_wgmma");
    }
    let extra = std::env::var("TITAN_NVCC_FLAGS").unwrap_or_default();
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&kernels)
        .expect("kernels/ folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    sources.sort();
    for src in sources {
        println!("cargo:rerun-if-changed={}", src.display());
        let stem = src.file_stem().unwrap().to_string_lossy().to_string();
        let cubin = out.join(format!("{stem}.cubin"));
        let mut cmd = Command::new(&nvcc);
        cmd.arg("-cubin")
            .arg(&target)
            .args(["-O3", "-std=c++17", "-lineinfo", "-Xptxas=-warn-spills"])
            .arg("-I")
            .arg(&kernels)
            .arg("-o")
            .arg(&cubin)
            .arg(&src);
        for f in extra.split_whitespace() {
            cmd.arg(f);
        }
        let output = cmd
            .output()
            .unwrap_or_else(|e| panic!("running {} failed: {e}", nvcc.display()));
        if !output.status.success() {
            panic!(
                "nvcc failed on {}:\n{}\n{}",
                src.display(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
            println!("cargo:warning={stem}.cu: {line}");
        }
    }
}
