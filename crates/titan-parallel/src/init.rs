//! Building the world group from the environment (torch's `init_process_group("env://")`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use crate::comm::host_group::HostGroup;
use crate::comm::tcp::TcpTransport;
use candle_core::Device;

use crate::comm::{local_world, Group};
use crate::env::DistEnv;
use crate::store::{StoreClient, StoreServer};
use crate::{Error, Result};

/// torchtitan's `[comm]` timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommOptions {
    /// For rendezvous and collectives until the first step completes
    /// (`comm.init_timeout_seconds`, default 300).
    pub init_timeout: Duration,
    /// For collectives afterwards (`comm.train_timeout_seconds`, default 100): switch with
    /// [`crate::ProcessGroup::set_timeout`] once the first step is done.
    pub train_timeout: Duration,
}

impl Default for CommOptions {
    fn default() -> Self {
        Self::from_seconds(300, 100)
    }
}

impl CommOptions {
    /// From `comm.init_timeout_seconds` and `comm.train_timeout_seconds`.
    pub fn from_seconds(init_timeout_seconds: u64, train_timeout_seconds: u64) -> Self {
        Self {
            init_timeout: Duration::from_secs(init_timeout_seconds),
            train_timeout: Duration::from_secs(train_timeout_seconds),
        }
    }
}

/// The rendezvous of one job: rank 0 hosts the store, every rank holds a connection to it.
/// Backends build their world from it (TCP; NCCL publishes its unique ids through it).
#[derive(Debug)]
pub struct Rendezvous {
    env: DistEnv,
    store: StoreClient,
    server: Option<Arc<StoreServer>>,
}

impl Rendezvous {
    /// Rank 0 starts the store on `MASTER_ADDR:MASTER_PORT`; every rank connects to it,
    /// retrying until `timeout`.
    pub fn connect(env: &DistEnv, timeout: Duration) -> Result<Self> {
        let server = if env.rank == 0 {
            Some(Arc::new(StoreServer::start(store_bind_addr(env)?)?))
        } else {
            None
        };
        let store = StoreClient::connect(&env.master_addr, env.master_port, timeout)?;
        Ok(Self {
            env: env.clone(),
            store,
            server,
        })
    }

    /// This process's place in the job.
    pub fn env(&self) -> &DistEnv {
        &self.env
    }

    /// The store (for backends and tools that exchange small values at startup).
    pub fn store(&self) -> &StoreClient {
        &self.store
    }

    /// A value rank 0 computes and every rank receives, through the store (how the NCCL
    /// backend hands its unique id to the other ranks). Collective over the world: `make` runs
    /// on rank 0 only; rank 0 returns once every rank has read the value (so its store may go
    /// away afterwards). Waits are bounded by `timeout` and name the ranks that did not arrive.
    pub fn share_from_rank0(
        &self,
        key: &str,
        make: impl FnOnce() -> Result<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        let value_key = format!("titan/share/{key}");
        let read_key = |r: usize| format!("titan/share/{key}/read/{r}");
        let start = std::time::Instant::now();
        let timed_out = |missing: Vec<usize>| Error::Timeout {
            op: format!("rendezvous (sharing `{key}` from rank 0)"),
            group: "world".into(),
            missing,
            waited_s: start.elapsed().as_secs_f64(),
        };
        if self.env.rank == 0 {
            let value = make()?;
            self.store.set(&value_key, &value)?;
            let others: Vec<usize> = (1..self.env.world_size).collect();
            let keys: Vec<String> = others.iter().map(|&r| read_key(r)).collect();
            let missing = self.store.wait(&keys, timeout)?;
            if !missing.is_empty() {
                let ranks = others
                    .into_iter()
                    .filter(|&r| missing.contains(&read_key(r)))
                    .collect();
                return Err(timed_out(ranks));
            }
            return Ok(value);
        }
        if !self
            .store
            .wait(std::slice::from_ref(&value_key), timeout)?
            .is_empty()
        {
            return Err(timed_out(vec![0]));
        }
        let value = self.store.get(&value_key)?.ok_or_else(|| Error::Store {
            addr: self.store.addr().to_string(),
            detail: format!("`{value_key}` vanished after it was set"),
        })?;
        self.store.set(&read_key(self.env.rank), b"1")?;
        Ok(value)
    }

    /// The world over NCCL on `device` (a CUDA device: this rank's GPU). The store stays with
    /// the world: sub-groups exchange their NCCL unique ids through it, with bounded waits.
    #[cfg(feature = "nccl")]
    pub fn nccl_world(self, device: &Device, timeout: Duration) -> Result<Group> {
        crate::comm::nccl::world(&self.env, self.store, self.server, device, timeout)
    }

    /// The world over TCP sockets between all ranks (collectives wait at most `timeout`).
    pub fn tcp_world(&self, timeout: Duration) -> Result<Group> {
        // Peers dial the address this host uses to reach the store: loopback stays loopback.
        let local = self.store.local_ip();
        let bind_ip = if local.is_loopback() {
            local
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        let transport = TcpTransport::connect(
            &self.store,
            self.server.clone(),
            self.env.rank,
            self.env.world_size,
            bind_ip,
            timeout,
        )?;
        Ok(HostGroup::world(transport))
    }
}

/// Where rank 0's store listens: `MASTER_ADDR` itself when it is a loopback address (nothing
/// outside the machine needs it), else every interface on `MASTER_PORT`.
fn store_bind_addr(env: &DistEnv) -> Result<SocketAddr> {
    let resolved: Vec<SocketAddr> = (env.master_addr.as_str(), env.master_port)
        .to_socket_addrs()
        .map_err(|e| Error::Env {
            var: "MASTER_ADDR".into(),
            value: env.master_addr.clone(),
            reason: format!("cannot be resolved ({e}): use rank 0's hostname or IP"),
        })?
        .collect();
    Ok(match resolved.first() {
        Some(first) if resolved.iter().all(|a| a.ip().is_loopback()) => *first,
        _ => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), env.master_port),
    })
}

/// The world group for this process: a trivial one-rank group when `env.world_size == 1`,
/// else the TCP backend through a rendezvous at `MASTER_ADDR:MASTER_PORT`. Collectives use
/// `opts.init_timeout` until the caller switches to `opts.train_timeout` after the first step.
pub fn init_process_group(env: &DistEnv, opts: &CommOptions) -> Result<Group> {
    if env.world_size == 1 {
        let mut world = local_world(1, opts.init_timeout)?;
        return world
            .pop()
            .ok_or_else(|| Error::Launch("no world group".into()));
    }
    tracing::info!(
        rank = env.rank,
        world_size = env.world_size,
        master = %format!("{}:{}", env.master_addr, env.master_port),
        "initializing the TCP process group"
    );
    let rdzv = Rendezvous::connect(env, opts.init_timeout)?;
    rdzv.tcp_world(opts.init_timeout)
}

/// The world group for a job whose tensors live on `device`: NCCL when `device` is a CUDA
/// device and this build has feature `nccl` (each rank passes its own GPU, usually
/// `LOCAL_RANK`), else [`init_process_group`]. `TITAN_DIST_BACKEND=tcp` forces the host
/// backend (collectives then copy device tensors through host memory).
pub fn init_process_group_on(env: &DistEnv, opts: &CommOptions, device: &Device) -> Result<Group> {
    let forced = std::env::var("TITAN_DIST_BACKEND").ok();
    match forced.as_deref() {
        None | Some("") | Some("auto") | Some("nccl") | Some("tcp") => {}
        Some(other) => {
            return Err(Error::Env {
                var: "TITAN_DIST_BACKEND".into(),
                value: other.into(),
                reason: "expected `nccl`, `tcp` or `auto` (unset)".into(),
            })
        }
    }
    let want_nccl = device.is_cuda() && env.world_size > 1 && forced.as_deref() != Some("tcp");
    if !want_nccl {
        if forced.as_deref() == Some("nccl") && env.world_size > 1 {
            return Err(Error::Config(format!(
                "TITAN_DIST_BACKEND=nccl needs a CUDA device, but this rank's tensors live on {device:?}"
            )));
        }
        return init_process_group(env, opts);
    }
    nccl_or_host(env, opts, device)
}

#[cfg(feature = "nccl")]
fn nccl_or_host(env: &DistEnv, opts: &CommOptions, device: &Device) -> Result<Group> {
    tracing::info!(
        rank = env.rank,
        world_size = env.world_size,
        master = %format!("{}:{}", env.master_addr, env.master_port),
        "initializing the NCCL process group"
    );
    let rdzv = Rendezvous::connect(env, opts.init_timeout)?;
    rdzv.nccl_world(device, opts.init_timeout)
}

#[cfg(not(feature = "nccl"))]
fn nccl_or_host(env: &DistEnv, opts: &CommOptions, _device: &Device) -> Result<Group> {
    if std::env::var("TITAN_DIST_BACKEND").as_deref() == Ok("nccl") {
        return Err(Error::Config(
            "TITAN_DIST_BACKEND=nccl, but this build has no NCCL: rebuild with `--features cuda,nccl` \
             (TITAN_CUDA_FEATURES=cuda,nccl bash scripts/build-cuda.sh)"
                .into(),
        ));
    }
    tracing::warn!(
        "this build has no NCCL (feature `nccl`): collectives on GPU tensors go through host \
         memory over TCP and will be slow; rebuild with `--features cuda,nccl`"
    );
    init_process_group(env, opts)
}
