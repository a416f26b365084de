//! `nccl_check`: every collective of titan-parallel's process groups, run by N processes on N
//! GPUs (NCCL) or on the CPU (TCP), checked against values computed on the host, then the
//! bandwidth of a large all_gather / reduce_scatter.
//!
//! ```text
//! nccl_check [--nproc 2] [--device cuda|cpu] [--mib 256] [--iters 20] [--timeout 120]
//!            [--missing-rank-test]
//! ```
//! Without `RANK` in the environment it launches `--nproc` copies of itself (torchrun's
//! variables, `MASTER_ADDR=127.0.0.1`, a free port); each copy opens GPU `LOCAL_RANK`. Under
//! torchrun (or with the variables set by hand) it runs as that rank. Exit status 0 when every
//! check passed on every rank. `--missing-rank-test` ends with the last rank skipping a
//! collective: the others must fail within `--timeout` seconds with an error naming it.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use titan_parallel::launch::{launch, LaunchConfig};
use titan_parallel::{
    all_reduce_f64, init_process_group_on, max_f64, sum_u64, CommOptions, DistEnv, Group, ReduceOp,
};

#[derive(Debug, thiserror::Error)]
enum CheckError {
    #[error(transparent)]
    Parallel(#[from] titan_parallel::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Tests(#[from] titan_gpu_tests::Error),
    #[error("argument {0}")]
    Arg(String),
}

type Result<T> = std::result::Result<T, CheckError>;

#[derive(Debug, Clone)]
struct Args {
    nproc: usize,
    device: String,
    mib: usize,
    iters: usize,
    timeout: u64,
    missing_rank_test: bool,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        nproc: 2,
        device: "cuda".into(),
        mib: 256,
        iters: 20,
        timeout: 120,
        missing_rank_test: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--missing-rank-test" {
            a.missing_rank_test = true;
            continue;
        }
        let value = it
            .next()
            .ok_or_else(|| CheckError::Arg(format!("{flag} needs a value")))?;
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| CheckError::Arg(format!("{flag} {v}: expected a positive number")))
        };
        match flag.as_str() {
            "--nproc" => a.nproc = num(&value)?.max(1) as usize,
            "--device" => a.device = value,
            "--mib" => a.mib = num(&value)?.max(1) as usize,
            "--iters" => a.iters = num(&value)?.max(1) as usize,
            "--timeout" => a.timeout = num(&value)?.max(1),
            other => {
                return Err(CheckError::Arg(format!(
                    "{other}: expected --nproc N, --device cuda|cpu, --mib M, --iters K, --timeout S, --missing-rank-test"
                )))
            }
        }
    }
    Ok(a)
}

/// Pass/fail lines of one rank.
#[derive(Default)]
struct Report {
    rank: usize,
    failed: Vec<String>,
    passed: usize,
}

impl Report {
    fn check(&mut self, what: &str, got: &[f64], want: &[f64], tol: f64) {
        let (mut num, mut den) = (0f64, 0f64);
        let same_len = got.len() == want.len();
        for (g, w) in got.iter().zip(want) {
            num += (g - w) * (g - w);
            den += w * w;
        }
        let err = num.sqrt() / den.sqrt().max(1e-30);
        if same_len && err <= tol {
            self.passed += 1;
            println!("  ok   {what} (rel err {err:.1e})");
        } else {
            let why = if same_len {
                format!("rel err {err:.3e} > {tol:.0e}")
            } else {
                format!("{} elements, expected {}", got.len(), want.len())
            };
            println!("  FAIL {what}: {why}");
            self.failed
                .push(format!("rank {}: {what}: {why}", self.rank));
        }
    }

    fn flag(&mut self, what: &str, ok: bool, detail: String) {
        if ok {
            self.passed += 1;
            println!("  ok   {what}");
        } else {
            println!("  FAIL {what}: {detail}");
            self.failed
                .push(format!("rank {}: {what}: {detail}", self.rank));
        }
    }
}

fn host(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
}

fn tensor(values: &[f64], shape: &[usize], dtype: DType, dev: &Device) -> Result<Tensor> {
    Ok(Tensor::from_slice(values, shape, &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(dev)?)
}

fn tol(dtype: DType) -> f64 {
    if dtype == DType::BF16 {
        8e-3
    } else {
        1e-6
    }
}

/// `(r + 1) * (1 + i % 7)`: small integers, exact in bf16 and in every sum below.
fn scaled(r: usize, len: usize) -> Vec<f64> {
    (0..len)
        .map(|i| (r + 1) as f64 * (1 + i % 7) as f64)
        .collect()
}

fn collectives(g: &Group, dev: &Device, dtype: DType, rep: &mut Report) -> Result<()> {
    let (n, r) = (g.size(), g.rank());
    let s = (n * (n + 1) / 2) as f64;
    let (rows, cols) = (37, 129);
    let len = rows * cols;
    let base: Vec<f64> = (0..len).map(|i| (1 + i % 7) as f64).collect();
    let x = tensor(&scaled(r, len), &[rows, cols], dtype, dev)?;
    let name = |op: &str| format!("{op} {dtype:?} [{rows}, {cols}]");

    for (op, factor) in [
        (ReduceOp::Sum, s),
        (ReduceOp::Avg, s / n as f64),
        (ReduceOp::Max, n as f64),
        (ReduceOp::Min, 1.0),
    ] {
        let got = host(&g.all_reduce(&x, op)?)?;
        let want: Vec<f64> = base.iter().map(|b| b * factor).collect();
        rep.check(
            &name(&format!("all_reduce {op:?}")),
            &got,
            &want,
            tol(dtype),
        );
    }

    // An odd size, no multiple of any tile or chunk.
    let big = 1_000_003;
    let xb = tensor(&scaled(r, big), &[big], dtype, dev)?;
    let got = host(&g.all_reduce(&xb, ReduceOp::Sum)?)?;
    let want: Vec<f64> = (0..big).map(|i| s * (1 + i % 7) as f64).collect();
    rep.check(
        &format!("all_reduce Sum {dtype:?} [{big}]"),
        &got,
        &want,
        tol(dtype),
    );

    // A transposed (non-contiguous) input and a view that starts mid-storage.
    let xt = tensor(&scaled(r, len), &[cols, rows], dtype, dev)?.t()?;
    let got = host(&g.all_reduce(&xt, ReduceOp::Sum)?)?;
    let want = host(&(tensor(&base, &[cols, rows], DType::F64, &Device::Cpu)?.t()? * s)?)?;
    rep.check(
        &format!("all_reduce Sum {dtype:?} transposed"),
        &got,
        &want,
        tol(dtype),
    );
    let wide = tensor(&scaled(r, (rows + 5) * cols), &[rows + 5, cols], dtype, dev)?;
    let got = host(&g.all_reduce(&wide.narrow(0, 3, rows)?, ReduceOp::Sum)?)?;
    let want: Vec<f64> = (3 * cols..(3 + rows) * cols)
        .map(|i| s * (1 + i % 7) as f64)
        .collect();
    rep.check(
        &format!("all_reduce Sum {dtype:?} offset view"),
        &got,
        &want,
        tol(dtype),
    );

    // all_gather: rank q's block is q + (i % 4) / 4.
    let mine: Vec<f64> = (0..len).map(|i| r as f64 + (i % 4) as f64 / 4.0).collect();
    let got = g.all_gather(&tensor(&mine, &[rows, cols], dtype, dev)?)?;
    let want: Vec<f64> = (0..n)
        .flat_map(|q| (0..len).map(move |i| q as f64 + (i % 4) as f64 / 4.0))
        .collect();
    rep.flag(
        &name("all_gather shape"),
        got.dims() == [n * rows, cols],
        format!("{:?}", got.dims()),
    );
    rep.check(&name("all_gather"), &host(&got)?, &want, tol(dtype));

    // reduce_scatter: rank r gets rows [r rows, (r + 1) rows) of the sum.
    let total = n * len;
    let z = tensor(
        &(0..total)
            .map(|j| (r + 1) as f64 * (1 + j % 5) as f64)
            .collect::<Vec<_>>(),
        &[n * rows, cols],
        dtype,
        dev,
    )?;
    for (op, factor) in [(ReduceOp::Sum, s), (ReduceOp::Avg, s / n as f64)] {
        let got = g.reduce_scatter(&z, op)?;
        let want: Vec<f64> = (r * len..(r + 1) * len)
            .map(|j| factor * (1 + j % 5) as f64)
            .collect();
        rep.flag(
            &name(&format!("reduce_scatter {op:?} shape")),
            got.dims() == [rows, cols],
            format!("{:?}", got.dims()),
        );
        rep.check(
            &name(&format!("reduce_scatter {op:?}")),
            &host(&got)?,
            &want,
            tol(dtype),
        );
    }

    // broadcast from the last rank.
    let root = n - 1;
    let got = host(&g.broadcast(&x, root)?)?;
    rep.check(
        &name(&format!("broadcast from {root}")),
        &got,
        &scaled(root, len),
        tol(dtype),
    );

    // send / recv around a ring; even ranks send first, odd ranks receive first (NCCL's
    // point-to-point calls wait for their peer).
    if n > 1 {
        let (next, prev) = ((r + 1) % n, (r + n - 1) % n);
        let recv = |g: &Group| g.recv(x.shape(), dtype, prev, dev);
        let got = if r % 2 == 0 {
            g.send(&x, next)?;
            recv(g)?
        } else {
            let t = recv(g)?;
            g.send(&x, next)?;
            t
        };
        rep.check(
            &name(&format!("recv from {prev}")),
            &host(&got)?,
            &scaled(prev, len),
            tol(dtype),
        );
    }
    Ok(())
}

fn scalars(g: &Group, rep: &mut Report) -> Result<()> {
    let (n, r) = (g.size(), g.rank());
    let counts = sum_u64(g.as_ref(), (1u64 << 40) + r as u64)?;
    let want = n as u64 * (1u64 << 40) + (n * (n - 1) / 2) as u64;
    rep.flag(
        "sum_u64 (i64 all_reduce)",
        counts == want,
        format!("{counts} != {want}"),
    );
    let v = all_reduce_f64(g.as_ref(), &[0.5 + r as f64, -(r as f64)], ReduceOp::Min)?;
    rep.check("all_reduce_f64 Min", &v, &[0.5, -((n - 1) as f64)], 0.0);
    let m = max_f64(g.as_ref(), r as f64)?;
    rep.check("max_f64", &[m], &[(n - 1) as f64], 0.0);
    g.barrier()?;
    rep.flag("barrier", true, String::new());
    Ok(())
}

fn splits(g: &Group, dev: &Device, rep: &mut Report) -> Result<()> {
    let (n, r) = (g.size(), g.rank());
    let one = |v: f64| tensor(&[v], &[1], DType::F32, dev);

    let parity: Vec<Vec<usize>> = vec![
        (0..n).filter(|q| q % 2 == 0).collect(),
        (0..n).filter(|q| q % 2 == 1).collect(),
    ];
    let parts: Vec<Vec<usize>> = parity.into_iter().filter(|p| !p.is_empty()).collect();
    if let Some(sub) = g.split_by_ranks(&parts, "parity")? {
        let got = host(&sub.all_reduce(&one((r + 1) as f64)?, ReduceOp::Sum)?)?;
        let want: f64 = sub.global_ranks().iter().map(|&q| (q + 1) as f64).sum();
        rep.check(
            &format!("split_by_ranks `{}` all_reduce", sub.name()),
            &got,
            &[want],
            0.0,
        );
    }

    // Same members as the world: shares its communicator.
    let all = g
        .split_by_ranks(&[(0..n).collect()], "all")?
        .ok_or_else(|| CheckError::Arg("split_by_ranks left this rank out".into()))?;
    let got = host(&all.all_reduce(&one(1.0)?, ReduceOp::Sum)?)?;
    rep.check("split_by_ranks (whole world)", &got, &[n as f64], 0.0);

    // MPI split by parity, ordered by descending global rank.
    let sub = g
        .split(Some((r % 2) as u32), (n - r) as u32, "color")?
        .ok_or_else(|| CheckError::Arg("split gave no group".into()))?;
    let mut want_members: Vec<usize> = (0..n).filter(|q| q % 2 == r % 2).collect();
    want_members.reverse();
    rep.flag(
        "split order by key",
        sub.global_ranks() == want_members.as_slice(),
        format!("{:?} != {want_members:?}", sub.global_ranks()),
    );
    let got = host(&sub.all_gather(&one(r as f64)?)?)?;
    let want: Vec<f64> = want_members.iter().map(|&q| q as f64).collect();
    rep.check(
        &format!("split `{}` all_gather", sub.name()),
        &got,
        &want,
        0.0,
    );
    Ok(())
}

fn asynchronous(g: &Group, dev: &Device, rep: &mut Report) -> Result<()> {
    let (n, r) = (g.size(), g.rank());
    let s = (n * (n + 1) / 2) as f64;
    let len = 1 << 20;
    let a = tensor(&scaled(r, len), &[len], DType::BF16, dev)?;
    let b = tensor(&scaled(r, n * len), &[n * len], DType::F32, dev)?;
    let gather = g.all_gather_async(&a)?;
    let scatter = g.reduce_scatter_async(&b, ReduceOp::Sum)?;
    // Compute queued while the collectives run; its result must not disturb them.
    let m = Tensor::ones((512, 512), DType::F32, dev)?;
    let busy = m.matmul(&m)?.sum_all()?;
    // A collective dropped unwaited must release its buffers safely.
    drop(g.all_reduce_async(&b, ReduceOp::Max)?);
    let gathered = host(&gather.wait()?)?;
    let scattered = host(&scatter.wait()?)?;
    let want_g: Vec<f64> = (0..n).flat_map(|q| scaled(q, len)).collect();
    let want_s: Vec<f64> = (r * len..(r + 1) * len)
        .map(|j| s * (1 + j % 7) as f64)
        .collect();
    rep.check(
        "all_gather_async bf16 [1M]",
        &gathered,
        &want_g,
        tol(DType::BF16),
    );
    rep.check(
        "reduce_scatter_async f32 [n x 1M]",
        &scattered,
        &want_s,
        1e-6,
    );
    rep.check(
        "compute overlapped with collectives",
        &[busy.to_dtype(DType::F64)?.to_scalar::<f64>()?],
        &[512.0 * 512.0 * 512.0],
        1e-6,
    );

    // In place (DDP's gradients): the tensors themselves hold the sums once waited.
    let own = sizes_in_place()
        .iter()
        .enumerate()
        .map(|(i, &k)| tensor(&scaled(r + i, k), &[k], DType::F32, dev))
        .collect::<Result<Vec<_>>>()?;
    let works = g
        .all_reduce_in_place_many_async(&own, ReduceOp::Sum)?
        .ok_or_else(|| CheckError::Arg("NCCL declined an in-place all-reduce".into()))?;
    for w in works {
        w.wait()?;
    }
    for (i, (t, &k)) in own.iter().zip(sizes_in_place().iter()).enumerate() {
        let ranks: f64 = (0..n).map(|q| (q + i + 1) as f64).sum();
        let want: Vec<f64> = (0..k).map(|j| ranks * (1 + j % 7) as f64).collect();
        rep.check(
            &format!("all_reduce_in_place_many_async f32 [{k}] (item {i})"),
            &host(t)?,
            &want,
            1e-6,
        );
    }

    // Grouped (one NCCL launch for several tensors of different sizes and shapes): each result
    // must equal its own collective's.
    let sizes = [7usize, 1 << 16, 3000];
    let shards = sizes
        .iter()
        .enumerate()
        .map(|(i, &k)| tensor(&scaled(r + i, k), &[k], DType::BF16, dev))
        .collect::<Result<Vec<_>>>()?;
    let fulls = sizes
        .iter()
        .enumerate()
        .map(|(i, &k)| tensor(&scaled(r + i, n * k), &[n, k], DType::F32, dev))
        .collect::<Result<Vec<_>>>()?;
    let gathers = g.all_gather_many_async(&shards)?;
    let scatters = g.reduce_scatter_many_async(&fulls, ReduceOp::Sum)?;
    for (i, (gw, sw)) in gathers.into_iter().zip(scatters).enumerate() {
        let k = sizes[i];
        let want_g: Vec<f64> = (0..n).flat_map(|q| scaled(q + i, k)).collect();
        rep.check(
            &format!("all_gather_many_async bf16 [{k}] (item {i})"),
            &host(&gw.wait()?)?,
            &want_g,
            tol(DType::BF16),
        );
        // Rank q's element j is (q + i + 1) * (1 + j % 7).
        let ranks: f64 = (0..n).map(|q| (q + i + 1) as f64).sum();
        let want_s: Vec<f64> = (r * k..(r + 1) * k)
            .map(|j| ranks * (1 + j % 7) as f64)
            .collect();
        rep.check(
            &format!("reduce_scatter_many_async f32 [{n} x {k}] (item {i})"),
            &host(&sw.wait()?)?,
            &want_s,
            1e-6,
        );
    }
    Ok(())
}

/// Sizes of the in-place all-reduce check: odd, large, tiny.
fn sizes_in_place() -> [usize; 3] {
    [1001, 1 << 20, 1]
}

/// nccl-tests' convention: `size` is the gathered (all_gather) or scattered (reduce_scatter)
/// buffer; bus bandwidth = size / time * (n - 1) / n.
fn bandwidth(g: &Group, dev: &Device, mib: usize, iters: usize) -> Result<()> {
    let n = g.size();
    let bytes = mib << 20;
    for dtype in [DType::BF16, DType::F32] {
        let elems = bytes / dtype.size_in_bytes() / n * n;
        let shard = Tensor::zeros(elems / n, dtype, dev)?;
        let full = Tensor::zeros(elems, dtype, dev)?;
        for op in ["all_gather", "reduce_scatter"] {
            let run = || -> titan_parallel::Result<Tensor> {
                if op == "all_gather" {
                    g.all_gather_async(&shard)?.wait()
                } else {
                    g.reduce_scatter_async(&full, ReduceOp::Sum)?.wait()
                }
            };
            for _ in 0..3 {
                run()?;
            }
            dev.synchronize()?;
            g.barrier()?;
            let start = Instant::now();
            for _ in 0..iters {
                run()?;
            }
            dev.synchronize()?;
            let t = start.elapsed().as_secs_f64() / iters as f64;
            let algbw = (elems * dtype.size_in_bytes()) as f64 / t / 1e9;
            let busbw = algbw * (n - 1) as f64 / n as f64;
            println!(
                "  {op:<14} {dtype:?} {mib} MiB x{n}: {:8.3} ms  algbw {algbw:7.1} GB/s  busbw {busbw:7.1} GB/s",
                t * 1e3
            );
        }
    }
    Ok(())
}

/// The last rank skips a collective; the others must be told, naming it, within the timeout.
fn missing_rank(g: &Group, dev: &Device, timeout: u64, rep: &mut Report) -> Result<()> {
    let (n, r) = (g.size(), g.rank());
    if n < 2 {
        return Ok(());
    }
    g.set_timeout(Duration::from_secs(timeout));
    if r == n - 1 {
        // Long enough for the others to time out (and, on NCCL, to abort and report).
        let nap = if g.backend() == "nccl" {
            timeout + 45
        } else {
            2 * timeout + 2
        };
        println!("  rank {r} skips the next all_reduce and sleeps {nap}s");
        std::thread::sleep(Duration::from_secs(nap));
        return Ok(());
    }
    let start = Instant::now();
    let x = Tensor::ones(8, DType::F32, dev)?;
    // On NCCL the first call is queued and its read-back waits for the watchdog, which aborts
    // it; a later call reports the failure. The host backends fail the first call.
    let outcome = (|| -> Result<()> {
        let t = g.all_reduce(&x, ReduceOp::Sum)?;
        host(&t)?;
        g.all_reduce(&x, ReduceOp::Sum)?;
        Ok(())
    })();
    let took = start.elapsed().as_secs_f64();
    match outcome {
        Err(e) => {
            let blamed = match &e {
                CheckError::Parallel(p) => p.blamed_ranks(),
                _ => Vec::new(),
            };
            println!("  rank {r} saw after {took:.1}s: {e}");
            rep.flag(
                "missing rank named within the timeout",
                blamed == vec![n - 1] && took < (timeout + 20) as f64,
                format!("blamed {blamed:?} after {took:.1}s"),
            );
        }
        Ok(()) => rep.flag(
            "missing rank named within the timeout",
            false,
            "the collectives succeeded".into(),
        ),
    }
    Ok(())
}

fn rank_main(args: &Args) -> Result<Report> {
    let env = DistEnv::from_env()?;
    let spec = if args.device == "cpu" {
        "cpu".to_string()
    } else {
        format!("cuda:{}", env.local_rank)
    };
    let dev = titan_gpu_tests::open(&spec)?;
    let opts = CommOptions::from_seconds(args.timeout, args.timeout);
    let world = init_process_group_on(&env, &opts, &dev.device)?;
    let mut rep = Report {
        rank: env.rank,
        ..Report::default()
    };
    println!(
        "rank {} of {}: backend {} on {} (NCCL_NVLS_ENABLE={})",
        world.rank(),
        world.size(),
        world.backend(),
        dev.name,
        std::env::var("NCCL_NVLS_ENABLE").unwrap_or_else(|_| "unset".into())
    );
    for dtype in [DType::F32, DType::BF16] {
        collectives(&world, &dev.device, dtype, &mut rep)?;
    }
    scalars(&world, &mut rep)?;
    splits(&world, &dev.device, &mut rep)?;
    asynchronous(&world, &dev.device, &mut rep)?;
    world.barrier()?;
    bandwidth(&world, &dev.device, args.mib, args.iters)?;
    if args.missing_rank_test {
        missing_rank(&world, &dev.device, args.timeout, &mut rep)?;
    }
    Ok(rep)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("nccl_check: {e}");
            return ExitCode::from(2);
        }
    };
    if std::env::var_os("RANK").is_none() && std::env::var_os("SLURM_PROCID").is_none() {
        let exe = match std::env::current_exe() {
            Ok(e) => e,
            Err(e) => {
                eprintln!("nccl_check: cannot find this program to launch its ranks: {e}");
                return ExitCode::from(2);
            }
        };
        let cfg = LaunchConfig {
            nproc_per_node: args.nproc,
            program: exe.into_os_string(),
            args: std::env::args_os().skip(1).collect(),
            log_ranks: None,
            master_port: None,
            env: Vec::new(),
        };
        return match launch(&cfg) {
            Ok(status) if status.success() => {
                println!("nccl_check: every rank passed");
                ExitCode::SUCCESS
            }
            Ok(status) => {
                eprintln!("nccl_check: a rank failed ({status})");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("nccl_check: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match rank_main(&args) {
        Ok(rep) if rep.failed.is_empty() => {
            println!("{} checks passed", rep.passed);
            ExitCode::SUCCESS
        }
        Ok(rep) => {
            for f in &rep.failed {
                eprintln!("FAILED {f}");
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("nccl_check: {e}");
            ExitCode::FAILURE
        }
    }
}
