//! Where this process sits in the job, read from the environment like torchrun's `env://`
//! rendezvous, with a Slurm fallback (`srun` without torchrun).

use crate::{Error, Result};

/// torch's default rendezvous port, used under Slurm when `MASTER_PORT` is unset (offset by
/// the job id so concurrent jobs on one node do not collide).
pub const DEFAULT_MASTER_PORT: u16 = 29500;

/// Which launcher described this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvSource {
    /// `RANK`, `WORLD_SIZE`, ... (torchrun, `cargo xtask train --nproc-per-node`, or by hand).
    Torchrun,
    /// `SLURM_PROCID`, `SLURM_NTASKS`, ... (`srun` launching every rank directly).
    Slurm,
    /// No launcher: one process.
    Single,
}

/// This process's place in the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistEnv {
    pub rank: usize,
    pub local_rank: usize,
    pub world_size: usize,
    pub local_world_size: usize,
    /// Host of rank 0's rendezvous store.
    pub master_addr: String,
    pub master_port: u16,
    pub source: EnvSource,
}

impl DistEnv {
    /// A single process.
    pub fn single() -> Self {
        Self {
            rank: 0,
            local_rank: 0,
            world_size: 1,
            local_world_size: 1,
            master_addr: "127.0.0.1".into(),
            master_port: DEFAULT_MASTER_PORT,
            source: EnvSource::Single,
        }
    }

    /// Reads the process environment.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads variables through `get` (for tests and for launchers that build environments).
    ///
    /// torchrun's variables win when `WORLD_SIZE` or `RANK` is set; otherwise Slurm's when
    /// `SLURM_PROCID` is set; otherwise a single process.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        if get("WORLD_SIZE").is_some() || get("RANK").is_some() {
            Self::torchrun(&get)
        } else if get("SLURM_PROCID").is_some() {
            Self::slurm(&get)
        } else {
            Ok(Self::single())
        }
    }

    fn torchrun(get: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let rank = required(get, "RANK", "torchrun sets RANK with WORLD_SIZE; set both")?;
        let world_size = required(
            get,
            "WORLD_SIZE",
            "torchrun sets WORLD_SIZE with RANK; set both",
        )?;
        let local_world_size = optional(get, "LOCAL_WORLD_SIZE")?.unwrap_or(world_size);
        let local_rank = optional(get, "LOCAL_RANK")?.unwrap_or(rank % local_world_size.max(1));
        let (master_addr, master_port) = if world_size > 1 {
            let addr = get("MASTER_ADDR").ok_or_else(|| Error::Env {
                var: "MASTER_ADDR".into(),
                value: String::new(),
                reason: "unset: every rank needs the host of rank 0 (127.0.0.1 on one machine)"
                    .into(),
            })?;
            let port = parse_port(get, "MASTER_PORT")?.ok_or_else(|| Error::Env {
                var: "MASTER_PORT".into(),
                value: String::new(),
                reason: format!(
                    "unset: every rank needs rank 0's rendezvous port (e.g. {DEFAULT_MASTER_PORT})"
                ),
            })?;
            (addr, port)
        } else {
            (
                get("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into()),
                parse_port(get, "MASTER_PORT")?.unwrap_or(DEFAULT_MASTER_PORT),
            )
        };
        Self {
            rank,
            local_rank,
            world_size,
            local_world_size,
            master_addr,
            master_port,
            source: EnvSource::Torchrun,
        }
        .validated()
    }

    fn slurm(get: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let rank = required(get, "SLURM_PROCID", "set by srun")?;
        let world_size = match optional(get, "SLURM_NTASKS")? {
            Some(n) => n,
            None => required(
                get,
                "SLURM_NPROCS",
                "srun sets SLURM_NTASKS (or SLURM_NPROCS); run under srun --ntasks",
            )?,
        };
        let local_rank = optional(get, "SLURM_LOCALID")?.unwrap_or(0);
        let local_world_size = match optional(get, "SLURM_NTASKS_PER_NODE")? {
            Some(n) => n,
            None => match get("SLURM_TASKS_PER_NODE") {
                Some(spec) => {
                    let per_node = parse_tasks_per_node(&spec).map_err(|reason| Error::Env {
                        var: "SLURM_TASKS_PER_NODE".into(),
                        value: spec.clone(),
                        reason,
                    })?;
                    let node = optional(get, "SLURM_NODEID")?.unwrap_or(0);
                    per_node.get(node).copied().unwrap_or(1)
                }
                None => 1,
            },
        };
        let master_addr = match get("MASTER_ADDR") {
            Some(a) => a,
            None => {
                let (var, list) = match get("SLURM_JOB_NODELIST") {
                    Some(l) => ("SLURM_JOB_NODELIST", l),
                    None => ("SLURM_NODELIST", get("SLURM_NODELIST").unwrap_or_default()),
                };
                let hosts = parse_nodelist(&list).map_err(|reason| Error::Env {
                    var: var.into(),
                    value: list.clone(),
                    reason,
                })?;
                hosts.into_iter().next().ok_or_else(|| Error::Env {
                    var: var.into(),
                    value: list.clone(),
                    reason: "lists no host: set MASTER_ADDR to rank 0's host".into(),
                })?
            }
        };
        let master_port = match parse_port(get, "MASTER_PORT")? {
            Some(p) => p,
            None => {
                let job: u64 = optional(get, "SLURM_JOB_ID")?
                    .map(|j: usize| j as u64)
                    .unwrap_or(0);
                DEFAULT_MASTER_PORT + (job % 1000) as u16
            }
        };
        Self {
            rank,
            local_rank,
            world_size,
            local_world_size,
            master_addr,
            master_port,
            source: EnvSource::Slurm,
        }
        .validated()
    }

    fn validated(self) -> Result<Self> {
        let bad = |var: &str, value: usize, reason: String| Error::Env {
            var: var.into(),
            value: value.to_string(),
            reason,
        };
        if self.world_size == 0 {
            return Err(bad("WORLD_SIZE", 0, "must be at least 1".into()));
        }
        if self.rank >= self.world_size {
            return Err(bad(
                "RANK",
                self.rank,
                format!("must be below WORLD_SIZE={}", self.world_size),
            ));
        }
        if self.local_world_size == 0 || self.local_world_size > self.world_size {
            return Err(bad(
                "LOCAL_WORLD_SIZE",
                self.local_world_size,
                format!("must be between 1 and WORLD_SIZE={}", self.world_size),
            ));
        }
        if self.local_rank >= self.local_world_size {
            return Err(bad(
                "LOCAL_RANK",
                self.local_rank,
                format!("must be below LOCAL_WORLD_SIZE={}", self.local_world_size),
            ));
        }
        Ok(self)
    }

    /// Whether more than one process takes part.
    pub fn is_distributed(&self) -> bool {
        self.world_size > 1
    }
}

fn parse_usize(var: &str, v: &str) -> Result<usize> {
    v.trim().parse::<usize>().map_err(|_| Error::Env {
        var: var.into(),
        value: v.into(),
        reason: "not a non-negative integer".into(),
    })
}

fn required(get: &dyn Fn(&str) -> Option<String>, var: &str, hint: &str) -> Result<usize> {
    match get(var) {
        Some(v) => parse_usize(var, &v),
        None => Err(Error::Env {
            var: var.into(),
            value: String::new(),
            reason: format!("unset ({hint})"),
        }),
    }
}

fn optional(get: &dyn Fn(&str) -> Option<String>, var: &str) -> Result<Option<usize>> {
    get(var).map(|v| parse_usize(var, &v)).transpose()
}

fn parse_port(get: &dyn Fn(&str) -> Option<String>, var: &str) -> Result<Option<u16>> {
    get(var)
        .map(|v| {
            v.trim()
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| Error::Env {
                    var: var.into(),
                    value: v.clone(),
                    reason: "not a TCP port (1-65535)".into(),
                })
        })
        .transpose()
}

/// Expands a Slurm host list: `node[01-03,7],gpu-a` → `node01 node02 node03 node7 gpu-a`.
/// Several bracket groups in one name expand as a product (`r[1-2]n[1-2]`); zero padding of
/// range bounds is kept.
pub fn parse_nodelist(list: &str) -> std::result::Result<Vec<String>, String> {
    let mut hosts = Vec::new();
    for item in split_top_level(list)? {
        let item = item.trim();
        if !item.is_empty() {
            expand(item, &mut hosts)?;
        }
    }
    Ok(hosts)
}

/// Splits on commas outside brackets.
fn split_top_level(s: &str) -> std::result::Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| format!("unbalanced ']' at byte {i}"))?
            }
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced '['".into());
    }
    parts.push(&s[start..]);
    Ok(parts)
}

fn expand(item: &str, out: &mut Vec<String>) -> std::result::Result<(), String> {
    let Some(open) = item.find('[') else {
        if item.contains(']') {
            return Err(format!("unbalanced ']' in {item:?}"));
        }
        out.push(item.to_string());
        return Ok(());
    };
    let close = item[open..]
        .find(']')
        .map(|c| open + c)
        .ok_or_else(|| format!("unbalanced '[' in {item:?}"))?;
    let (prefix, ranges, rest) = (&item[..open], &item[open + 1..close], &item[close + 1..]);
    for range in ranges.split(',') {
        let range = range.trim();
        let (lo, hi) = match range.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (range, range),
        };
        let bad = || format!("bad range {range:?} in {item:?}: expected N or N-M with N <= M");
        let lo_n: u64 = lo.parse().map_err(|_| bad())?;
        let hi_n: u64 = hi.parse().map_err(|_| bad())?;
        if lo_n > hi_n || hi_n - lo_n > 100_000 {
            return Err(bad());
        }
        let width = if lo.len() > 1 && lo.starts_with('0') {
            lo.len()
        } else {
            0
        };
        for n in lo_n..=hi_n {
            expand(&format!("{prefix}{n:0width$}{rest}"), out)?;
        }
    }
    Ok(())
}

/// Expands `SLURM_TASKS_PER_NODE` (`2(x3),1` → `[2, 2, 2, 1]`).
fn parse_tasks_per_node(spec: &str) -> std::result::Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in spec.split(',') {
        let part = part.trim();
        let bad = || format!("bad entry {part:?}: expected N or N(xK)");
        let (n, times) = match part.split_once("(x") {
            Some((n, k)) => (n, k.strip_suffix(')').ok_or_else(bad)?),
            None => (part, "1"),
        };
        let n: usize = n.parse().map_err(|_| bad())?;
        let times: usize = times.parse().map_err(|_| bad())?;
        out.extend(std::iter::repeat_n(n, times));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<DistEnv> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        DistEnv::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn torchrun_variables() -> Result<()> {
        let e = env(&[
            ("RANK", "3"),
            ("LOCAL_RANK", "1"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "node1"),
            ("MASTER_PORT", "29501"),
        ])?;
        assert_eq!(
            (e.rank, e.local_rank, e.world_size, e.local_world_size),
            (3, 1, 4, 2)
        );
        assert_eq!(
            (e.master_addr.as_str(), e.master_port, e.source),
            ("node1", 29501, EnvSource::Torchrun)
        );
        // Torchrun wins over Slurm when both are present (torchrun inside an allocation).
        let e = env(&[("RANK", "0"), ("WORLD_SIZE", "1"), ("SLURM_PROCID", "5")])?;
        assert_eq!(e.source, EnvSource::Torchrun);
        assert_eq!(env(&[])?, DistEnv::single());
        Ok(())
    }

    #[test]
    fn errors_name_the_variable() {
        let msg = |r: Result<DistEnv>| r.map(|_| String::new()).unwrap_or_else(|e| e.to_string());
        let m = msg(env(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("MASTER_PORT", "1234"),
        ]));
        assert!(m.contains("MASTER_ADDR"), "{m}");
        let m = msg(env(&[
            ("RANK", "2"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "1"),
        ]));
        assert!(
            m.contains("RANK=\"2\"") && m.contains("WORLD_SIZE=2"),
            "{m}"
        );
        let m = msg(env(&[("RANK", "x"), ("WORLD_SIZE", "2")]));
        assert!(m.contains("RANK=\"x\""), "{m}");
        let m = msg(env(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "70000"),
        ]));
        assert!(m.contains("MASTER_PORT"), "{m}");
    }

    #[test]
    fn slurm_fallback() -> Result<()> {
        let e = env(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_TASKS_PER_NODE", "4(x2)"),
            ("SLURM_NODEID", "1"),
            ("SLURM_JOB_NODELIST", "gpu[003-004]"),
            ("SLURM_JOB_ID", "123456"),
        ])?;
        assert_eq!(
            (e.rank, e.local_rank, e.world_size, e.local_world_size),
            (5, 1, 8, 4)
        );
        assert_eq!(e.master_addr, "gpu003");
        assert_eq!(e.master_port, DEFAULT_MASTER_PORT + 456);
        assert_eq!(e.source, EnvSource::Slurm);
        Ok(())
    }

    #[test]
    fn nodelists() {
        assert_eq!(parse_nodelist("a").unwrap(), vec!["a"]);
        assert_eq!(
            parse_nodelist("host[1-3,5]").unwrap(),
            vec!["host1", "host2", "host3", "host5"]
        );
        assert_eq!(
            parse_nodelist("n[08-10],login").unwrap(),
            vec!["n08", "n09", "n10", "login"]
        );
        assert_eq!(
            parse_nodelist("r[1-2]n[1-2]").unwrap(),
            vec!["r1n1", "r1n2", "r2n1", "r2n2"]
        );
        assert_eq!(parse_nodelist("gpu-[7]-ib").unwrap(), vec!["gpu-7-ib"]);
        assert!(parse_nodelist("host[3-1]").is_err());
        assert!(parse_nodelist("host[1-2").is_err());
        assert!(parse_nodelist("host]").is_err());
        assert!(parse_nodelist("host[a-b]").is_err());
        assert_eq!(parse_tasks_per_node("2(x3),1").unwrap(), vec![2, 2, 2, 1]);
        assert!(parse_tasks_per_node("2(x").is_err());
    }
}
