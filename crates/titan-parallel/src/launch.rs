//! A local launcher (torchrun's single-node job): starts one process per rank with the
//! rendezvous variables set, relays the output of the ranks in `LOG_RANK` with a `[rankN]:`
//! prefix (torchtitan's `run_train.sh`: `torchrun --local-ranks-filter $LOG_RANK --tee 3`), and
//! fails fast: when one rank exits with an error, the others are killed.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{Error, Result};

/// Lines of a silenced rank's output kept to show if it fails.
const TAIL_LINES: usize = 40;

/// What to launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchConfig {
    /// Processes (ranks) on this machine.
    pub nproc_per_node: usize,
    pub program: OsString,
    pub args: Vec<OsString>,
    /// Ranks whose output is shown (`None`: all).
    pub log_ranks: Option<Vec<usize>>,
    /// Rendezvous port; `None` picks a free one.
    pub master_port: Option<u16>,
    /// Extra environment for every rank.
    pub env: Vec<(OsString, OsString)>,
}

impl LaunchConfig {
    /// `nproc_per_node` copies of `program args`, showing the ranks in `log_rank` (see
    /// [`parse_log_rank`]).
    pub fn new(
        nproc_per_node: usize,
        program: impl AsRef<OsStr>,
        args: &[impl AsRef<OsStr>],
        log_rank: &str,
    ) -> Result<Self> {
        Ok(Self {
            nproc_per_node,
            program: program.as_ref().to_os_string(),
            args: args.iter().map(|a| a.as_ref().to_os_string()).collect(),
            log_ranks: parse_log_rank(log_rank)?,
            master_port: None,
            env: Vec::new(),
        })
    }
}

/// Parses `LOG_RANK`: `0`, `0,2`, `0-3` or a mix; empty, `all` or `*` shows every rank.
pub fn parse_log_rank(spec: &str) -> Result<Option<Vec<usize>>> {
    let spec = spec.trim();
    if spec.is_empty() || spec == "all" || spec == "*" {
        return Ok(None);
    }
    let bad = || Error::Env {
        var: "LOG_RANK".into(),
        value: spec.into(),
        reason: "expected rank numbers like 0, 0,2 or 0-3 (or `all`)".into(),
    };
    let mut ranks = Vec::new();
    for part in spec.split(',') {
        let part = part.trim();
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (
                    a.trim().parse().map_err(|_| bad())?,
                    b.trim().parse().map_err(|_| bad())?,
                );
                if a > b {
                    return Err(bad());
                }
                ranks.extend(a..=b);
            }
            None => ranks.push(part.parse().map_err(|_| bad())?),
        }
    }
    Ok(Some(ranks))
}

/// Launches `nproc_per_node` ranks of `program args` on this machine and waits for them; see
/// [`launch`].
pub fn launch_local(
    nproc_per_node: usize,
    program: impl AsRef<OsStr>,
    args: &[impl AsRef<OsStr>],
    log_rank: &str,
) -> Result<ExitStatus> {
    launch(&LaunchConfig::new(nproc_per_node, program, args, log_rank)?)
}

/// A free TCP port on loopback (bound and released: another process could take it before the
/// job does, which only makes rank 0 report the port as busy).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::io("finding a free port", e))?;
    Ok(l.local_addr()
        .map_err(|e| Error::io("finding a free port", e))?
        .port())
}

/// Output of one rank being relayed or kept.
struct Relay {
    rank: usize,
    shown: bool,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl Relay {
    /// Copies lines from `from` to the console (prefixed) or into the tail buffer.
    fn spawn(
        &self,
        from: impl Read + Send + 'static,
        to_stderr: bool,
    ) -> Result<std::thread::JoinHandle<()>> {
        let (rank, shown, tail) = (self.rank, self.shown, self.tail.clone());
        std::thread::Builder::new()
            .name(format!("relay-rank{rank}"))
            .spawn(move || {
                let mut reader = BufReader::new(from);
                let mut buf = Vec::new();
                while matches!(reader.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .to_string();
                    buf.clear();
                    if shown {
                        // One write per line, so lines of different ranks do not interleave.
                        let text = format!("[rank{rank}]:{line}\n");
                        let _ = if to_stderr {
                            std::io::stderr().lock().write_all(text.as_bytes())
                        } else {
                            std::io::stdout().lock().write_all(text.as_bytes())
                        };
                    } else {
                        let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                        if t.len() == TAIL_LINES {
                            t.pop_front();
                        }
                        t.push_back(line);
                    }
                }
            })
            .map_err(|e| Error::io(format!("starting the output relay of rank {rank}"), e))
    }
}

/// Launches the ranks of `cfg` with torchrun's variables (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`,
/// `LOCAL_WORLD_SIZE`, `MASTER_ADDR=127.0.0.1`, `MASTER_PORT`) and waits. Returns the first
/// failing rank's exit status (after killing the others), or success when every rank succeeds.
pub fn launch(cfg: &LaunchConfig) -> Result<ExitStatus> {
    let n = cfg.nproc_per_node;
    if n == 0 {
        return Err(Error::Launch(
            "--nproc-per-node 0: launch at least one rank".into(),
        ));
    }
    let port = match cfg.master_port {
        Some(p) => p,
        None => free_port()?,
    };
    tracing::info!(nproc_per_node = n, master_port = port, program = ?cfg.program, "launching local ranks");
    let mut children: Vec<Option<Child>> = Vec::with_capacity(n);
    let mut relays = Vec::new();
    let mut tails = Vec::new();
    for rank in 0..n {
        let mut cmd = Command::new(&cfg.program);
        cmd.args(&cfg.args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("LOCAL_WORLD_SIZE", n.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &cfg.env {
            cmd.env(k, v);
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                kill_all(&mut children);
                return Err(Error::io(
                    format!("starting rank {rank}: {:?}", cfg.program),
                    e,
                ));
            }
        };
        let relay = Relay {
            rank,
            shown: cfg.log_ranks.as_ref().is_none_or(|r| r.contains(&rank)),
            tail: Arc::new(Mutex::new(VecDeque::new())),
        };
        if let Some(out) = child.stdout.take() {
            relays.push(relay.spawn(out, false)?);
        }
        if let Some(err) = child.stderr.take() {
            relays.push(relay.spawn(err, true)?);
        }
        tails.push((relay.shown, relay.tail));
        children.push(Some(child));
    }

    let mut last_ok = None;
    let outcome = loop {
        let mut running = 0;
        let mut failed = None;
        for (rank, slot) in children.iter_mut().enumerate() {
            let Some(child) = slot else { continue };
            match child.try_wait() {
                Ok(Some(status)) => {
                    *slot = None;
                    if status.success() {
                        last_ok = Some(status);
                    } else {
                        failed = Some((rank, status));
                        break;
                    }
                }
                Ok(None) => running += 1,
                Err(e) => {
                    kill_all(&mut children);
                    return Err(Error::io(format!("waiting for rank {rank}"), e));
                }
            }
        }
        if let Some(f) = failed {
            break Some(f);
        }
        if running == 0 {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };

    let killed: Vec<usize> = children
        .iter()
        .enumerate()
        .filter(|(_, c)| c.is_some())
        .map(|(r, _)| r)
        .collect();
    kill_all(&mut children);
    for r in relays {
        let _ = r.join();
    }
    match outcome {
        Some((rank, status)) => {
            let (shown, tail) = &tails[rank];
            if !shown {
                let tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                let mut err = std::io::stderr().lock();
                let _ = writeln!(
                    err,
                    "[launcher] last {} lines of rank {rank} (not in LOG_RANK):",
                    tail.len()
                );
                for line in tail.iter() {
                    let _ = writeln!(err, "[rank{rank}]:{line}");
                }
            }
            tracing::error!(rank, %status, killed = ?killed, "a rank failed; stopped the others");
            Ok(status)
        }
        None => last_ok.ok_or_else(|| Error::Launch("no rank reported an exit status".into())),
    }
}

fn kill_all(children: &mut [Option<Child>]) {
    for c in children.iter_mut().flatten() {
        let _ = c.kill();
        let _ = c.wait();
    }
    for c in children.iter_mut() {
        *c = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_rank_specs() {
        assert_eq!(parse_log_rank("0").unwrap(), Some(vec![0]));
        assert_eq!(parse_log_rank("0,2-4").unwrap(), Some(vec![0, 2, 3, 4]));
        assert_eq!(parse_log_rank(" all ").unwrap(), None);
        assert_eq!(parse_log_rank("").unwrap(), None);
        let e = parse_log_rank("x").unwrap_err().to_string();
        assert!(e.contains("LOG_RANK"), "{e}");
        assert!(parse_log_rank("3-1").is_err());
    }

    #[test]
    fn zero_ranks_is_an_error() {
        let e = launch_local(0, "true", &[] as &[&str], "0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("nproc-per-node"), "{e}");
    }
}
