//! Data parallelism from `titan-parallel` (FSDP, HSDP, DDP) as a trainer [`Strategy`], and
//! how a process joins a distributed job (torchrun / Slurm environment).

use candle_core::{DType, Device};
use titan_config::JobConfig;
use titan_core::{BlockHooks, LayeredModel, Module, Param};
use titan_parallel::{
    init_process_group_on, max_f64, sum_f64, CommOptions, DataParallel, DataParallelConfig,
    DeviceMesh, DistEnv, Group, ParallelDims, ReshardAfterForward, ShardInit,
};

use crate::model::TrainableModel;
use crate::strategy::{ShardLayout, Strategy};
use crate::{Error, Result};

fn perr(e: titan_parallel::Error) -> Error {
    Error::Msg(e.to_string())
}

/// FSDP / HSDP / DDP over a device mesh built from `[parallelism]`.
pub struct DataParallelStrategy {
    mesh: DeviceMesh,
    dp: Option<DataParallel>,
    reshard: ReshardAfterForward,
    compute_dtype: DType,
    train_timeout: std::time::Duration,
}

impl DataParallelStrategy {
    /// The mesh for `world` from the config's degrees (product must equal the world size).
    pub fn new(world: Group, cfg: &JobConfig) -> Result<Self> {
        let p = &cfg.parallelism;
        let dims = ParallelDims::new(
            p.data_parallel_replicate_degree,
            p.data_parallel_shard_degree,
            p.context_parallel_degree,
            p.tensor_parallel_degree,
            p.pipeline_parallel_degree,
            world.size(),
        )
        .map_err(perr)?;
        let mesh = DeviceMesh::new(world, dims).map_err(perr)?;
        let reshard = match p.fsdp_reshard_after_forward {
            titan_config::ReshardAfterForward::Default => ReshardAfterForward::Default,
            titan_config::ReshardAfterForward::Always => ReshardAfterForward::Always,
            titan_config::ReshardAfterForward::Never => ReshardAfterForward::Never,
        };
        Ok(Self {
            mesh,
            dp: None,
            reshard,
            compute_dtype: DType::F32,
            train_timeout: std::time::Duration::from_secs(cfg.comm.train_timeout_seconds),
        })
    }

    /// `single`, `ddp`, `fsdp` or `hsdp`.
    pub fn kind(&self) -> &'static str {
        self.dp
            .as_ref()
            .map(|d| d.kind())
            .unwrap_or("uninitialized")
    }

    fn dp(&self) -> &DataParallel {
        self.dp
            .as_ref()
            .expect("init_weights runs before anything else")
    }
}

/// Join the job this process was launched into (torchrun or Slurm variables), or a one-rank
/// world when there is none. On a CUDA device (`training.device`, GPU `LOCAL_RANK`) the world
/// runs on NCCL when the build has feature `nccl`.
pub fn world_from_env(cfg: &JobConfig) -> Result<(DistEnv, Group)> {
    let env = dist_env()?;
    let device = if env.world_size > 1 {
        crate::device::choose_device(cfg, env.local_rank)?.device
    } else {
        Device::Cpu
    };
    let world = world_on(cfg, &env, &device)?;
    Ok((env, world))
}

/// This process's place in the job (torchrun or Slurm variables; one process without them).
pub fn dist_env() -> Result<DistEnv> {
    DistEnv::from_env().map_err(perr)
}

/// [`world_from_env`] for a device the caller already opened (the one it trains on; the
/// backend follows it).
pub fn world_on(cfg: &JobConfig, env: &DistEnv, device: &Device) -> Result<Group> {
    let opts = CommOptions::from_seconds(
        cfg.comm.init_timeout_seconds,
        cfg.comm.train_timeout_seconds,
    );
    init_process_group_on(env, &opts, device).map_err(perr)
}

impl<M: TrainableModel + LayeredModel + Module> Strategy<M> for DataParallelStrategy {
    fn hooks(&mut self) -> &mut dyn BlockHooks {
        self.dp
            .as_mut()
            .expect("init_weights runs before anything else")
    }
    fn dp_rank(&self) -> usize {
        self.mesh.dp_rank()
    }
    fn dp_world_size(&self) -> usize {
        self.mesh.dims().dp()
    }
    fn rank(&self) -> usize {
        self.mesh.world().rank()
    }
    fn world_size(&self) -> usize {
        self.mesh.world().size()
    }
    fn all_reduce_sum(&mut self, v: f64) -> Result<f64> {
        sum_f64(self.mesh.dp().as_ref(), v).map_err(perr)
    }
    fn all_reduce_max(&mut self, v: f64) -> Result<f64> {
        max_f64(self.mesh.dp().as_ref(), v).map_err(perr)
    }
    fn init_weights(
        &mut self,
        model: &mut M,
        seed: u64,
        device: &Device,
        compute_dtype: DType,
    ) -> Result<()> {
        let mut cfg = DataParallelConfig::new(compute_dtype);
        cfg.reshard_after_forward = self.reshard;
        self.compute_dtype = compute_dtype;
        let dp = DataParallel::new(model, &self.mesh, &cfg, ShardInit::Seed(seed), device)
            .map_err(perr)?;
        tracing::info!(
            "Data parallelism: {} over {} rank(s) (replicate {} x shard {})",
            dp.kind(),
            self.mesh.world().size(),
            self.mesh.dims().dp_replicate,
            self.mesh.dims().dp_shard
        );
        self.dp = Some(dp);
        // Setup is done: collectives from here on use the training timeout.
        self.mesh.world().set_timeout(self.train_timeout);
        Ok(())
    }
    fn optimizer_params<'a>(&'a mut self, model: &'a mut M) -> Vec<&'a mut Param> {
        self.dp
            .as_mut()
            .expect("init_weights runs before anything else")
            .optimizer_params(model)
    }
    fn optimizer_step(
        &mut self,
        model: &mut M,
        next_pass: bool,
        step: &mut dyn FnMut(&mut [&mut Param]) -> Result<()>,
    ) -> Result<()> {
        self.dp
            .as_mut()
            .expect("init_weights runs before anything else")
            .optimizer_step(model, next_pass, step)
    }
    fn global_grad_sq_norm(&mut self, model: &mut M) -> Result<f64> {
        self.dp().grad_sq_norm(model).map_err(perr)
    }
    fn refresh_in_step(&self) -> bool {
        // The fused AdamW writes the compute copies of what it steps: the replicas' own
        // parameters, or FSDP's shards, which the next all-gathers then send uncast.
        true
    }
    fn after_step(&mut self, model: &mut M) -> Result<()> {
        self.dp
            .as_mut()
            .expect("init_weights runs before anything else")
            .after_refreshing_step(model);
        Ok(())
    }
    fn after_restore(&mut self, model: &mut M) -> Result<()> {
        // FSDP's model parameters hold no masters: rebuild only what the strategy owns (its
        // shards' copies were dropped with the load and are cast at the next all-gather).
        let dtype = self.compute_dtype;
        self.dp
            .as_mut()
            .expect("init_weights runs before anything else")
            .after_optimizer_step(model, dtype)
            .map_err(perr)
    }
    fn layout(&self, model: &M, name: &str) -> Option<ShardLayout> {
        let m = self.dp().shard_meta(model, name)?;
        Some(ShardLayout {
            writes: m.writes_checkpoint(),
            global_shape: m.global_shape,
            start: m.offset,
            len: m.rows,
        })
    }
    fn barrier(&mut self) -> Result<()> {
        self.mesh.world().barrier().map_err(perr)
    }
}
