//! The pieces of a training run, each replaceable (torchtitan's `TrainSpec`), and the registry
//! that maps `model.name` to them.

use std::collections::BTreeMap;
use std::sync::Arc;

use titan_config::JobConfig;
use titan_data::{DatasetRegistry, Tokenizer};
use titan_optim::{AdamWConfig, DecayType, LrScheduler, LrSchedulerConfig, Optimizer};

use crate::data::{default_batch_source, BatchSource, DataRequest};
use crate::model::TrainableModel;
use crate::{Error, Result};

type BuildModel<M> = dyn Fn(&JobConfig, Option<&Tokenizer>) -> Result<M> + Send + Sync;
type BuildData = dyn Fn(&DataRequest<'_>) -> Result<Box<dyn BatchSource>> + Send + Sync;
type BuildTokenizer = dyn Fn(&JobConfig) -> Result<Arc<Tokenizer>> + Send + Sync;
type BuildOptimizer = dyn Fn(&JobConfig) -> Result<Optimizer> + Send + Sync;
type BuildLrScheduler = dyn Fn(&JobConfig) -> Result<LrScheduler> + Send + Sync;
type BuildDatasets = dyn Fn() -> DatasetRegistry + Send + Sync;
type BuildHfAdapter<M> =
    dyn Fn(&M) -> Result<Arc<dyn titan_checkpoint::StateDictAdapter>> + Send + Sync;

/// How to build each component of a run for model type `M`. Every builder but the model's
/// has a default; replace any of them with the `with_*` methods.
pub struct TrainSpec<M: TrainableModel> {
    pub name: String,
    pub build_model: Arc<BuildModel<M>>,
    pub build_tokenizer: Arc<BuildTokenizer>,
    pub build_datasets: Arc<BuildDatasets>,
    pub build_data: Arc<BuildData>,
    pub build_optimizer: Arc<BuildOptimizer>,
    pub build_lr_scheduler: Arc<BuildLrScheduler>,
    /// Hugging Face key map of the model (for `initial_load_in_hf`, `last_save_in_hf`).
    pub hf_adapter: Option<Arc<BuildHfAdapter<M>>>,
}

impl<M: TrainableModel> Clone for TrainSpec<M> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            build_model: self.build_model.clone(),
            build_tokenizer: self.build_tokenizer.clone(),
            build_datasets: self.build_datasets.clone(),
            build_data: self.build_data.clone(),
            build_optimizer: self.build_optimizer.clone(),
            build_lr_scheduler: self.build_lr_scheduler.clone(),
            hf_adapter: self.hf_adapter.clone(),
        }
    }
}

impl<M: TrainableModel> TrainSpec<M> {
    /// A spec with Titan's default components around `build_model`, which receives the
    /// config and the tokenizer (models take their vocabulary size and EOS id from it; `None`
    /// for shape-only uses such as memory estimates, where the flavor's vocabulary stands).
    pub fn new(
        name: impl Into<String>,
        build_model: impl Fn(&JobConfig, Option<&Tokenizer>) -> Result<M> + Send + Sync + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            build_model: Arc::new(build_model),
            build_tokenizer: Arc::new(default_tokenizer),
            build_datasets: Arc::new(DatasetRegistry::with_builtins),
            build_data: Arc::new(default_batch_source),
            build_optimizer: Arc::new(default_optimizer),
            build_lr_scheduler: Arc::new(default_lr_scheduler),
            hf_adapter: None,
        }
    }

    /// Give the model's Hugging Face state-dict adapter (enables HF import and export).
    pub fn with_hf_adapter(
        mut self,
        f: impl Fn(&M) -> Result<Arc<dyn titan_checkpoint::StateDictAdapter>> + Send + Sync + 'static,
    ) -> Self {
        self.hf_adapter = Some(Arc::new(f));
        self
    }

    /// Replace the data loader.
    pub fn with_data(
        mut self,
        f: impl Fn(&DataRequest<'_>) -> Result<Box<dyn BatchSource>> + Send + Sync + 'static,
    ) -> Self {
        self.build_data = Arc::new(f);
        self
    }
    /// Replace the dataset registry (e.g. to register your own datasets by name).
    pub fn with_datasets(
        mut self,
        f: impl Fn() -> DatasetRegistry + Send + Sync + 'static,
    ) -> Self {
        self.build_datasets = Arc::new(f);
        self
    }
    /// Replace the tokenizer.
    pub fn with_tokenizer(
        mut self,
        f: impl Fn(&JobConfig) -> Result<Arc<Tokenizer>> + Send + Sync + 'static,
    ) -> Self {
        self.build_tokenizer = Arc::new(f);
        self
    }
    /// Replace the optimizer.
    pub fn with_optimizer(
        mut self,
        f: impl Fn(&JobConfig) -> Result<Optimizer> + Send + Sync + 'static,
    ) -> Self {
        self.build_optimizer = Arc::new(f);
        self
    }
    /// Replace the learning-rate schedule.
    pub fn with_lr_scheduler(
        mut self,
        f: impl Fn(&JobConfig) -> Result<LrScheduler> + Send + Sync + 'static,
    ) -> Self {
        self.build_lr_scheduler = Arc::new(f);
        self
    }
}

/// The tokenizer at `model.tokenizer_path` / `model.hf_assets_path`, else Titan's embedded one.
pub fn default_tokenizer(cfg: &JobConfig) -> Result<Arc<Tokenizer>> {
    let dir = cfg
        .model
        .tokenizer_path
        .as_ref()
        .or(cfg.model.hf_assets_path.as_ref());
    Ok(Arc::new(match dir {
        Some(d) => Tokenizer::from_dir(d)?,
        None => titan_data::embedded::tokenizer()?,
    }))
}

/// AdamW or Adam from `[optimizer]`.
pub fn default_optimizer(cfg: &JobConfig) -> Result<Optimizer> {
    let o = &cfg.optimizer;
    let base = match o.name {
        titan_config::OptimizerName::AdamW => AdamWConfig::adamw(),
        titan_config::OptimizerName::Adam => AdamWConfig::adam(),
    };
    let c = AdamWConfig {
        lr: o.lr,
        betas: (o.beta1, o.beta2),
        eps: o.eps,
        weight_decay: o.weight_decay,
        ..base
    };
    Ok(Optimizer::new(c)?)
}

/// torchtitan's warmup / stable / decay schedule from `[lr_scheduler]`.
pub fn default_lr_scheduler(cfg: &JobConfig) -> Result<LrScheduler> {
    let l = &cfg.lr_scheduler;
    let decay_type = match l.decay_type {
        titan_config::DecayType::Linear => DecayType::Linear,
        titan_config::DecayType::Sqrt => DecayType::Sqrt,
        titan_config::DecayType::Cosine => DecayType::Cosine,
    };
    Ok(LrScheduler::new(LrSchedulerConfig {
        lr: cfg.optimizer.lr,
        warmup_steps: l.warmup_steps as u64,
        decay_ratio: l.decay_ratio,
        decay_type,
        min_lr_factor: l.min_lr_factor,
        total_steps: l.total_steps.unwrap_or(cfg.training.steps) as u64,
    })?)
}

/// Runs a registered spec: the type-erased face of a [`TrainSpec`].
pub trait RunSpec: Send + Sync {
    fn train(&self, cfg: &JobConfig, ctx: &crate::RunContext) -> Result<crate::TrainOutcome>;
    fn estimate_memory(&self, cfg: &JobConfig) -> Result<crate::estimate::MemoryEstimate>;
}

impl<M: TrainableModel + 'static> RunSpec for TrainSpec<M> {
    fn train(&self, cfg: &JobConfig, ctx: &crate::RunContext) -> Result<crate::TrainOutcome> {
        let dp_degrees = cfg.parallelism.data_parallel_replicate_degree > 1
            || cfg.parallelism.data_parallel_shard_degree > 1;
        if crate::is_distributed_launch() || dp_degrees {
            // One device for the process group and the training loop.
            let env = crate::parallel::dist_env()?;
            let device = crate::device::choose_device(cfg, env.local_rank)?;
            let world = crate::parallel::world_on(cfg, &env, &device.device)?;
            let mut strategy = crate::parallel::DataParallelStrategy::new(world, cfg)?;
            crate::train::train_on(self, cfg, ctx, &mut strategy, device)
        } else {
            crate::train::train(self, cfg, ctx)
        }
    }
    fn estimate_memory(&self, cfg: &JobConfig) -> Result<crate::estimate::MemoryEstimate> {
        crate::estimate::estimate(self, cfg)
    }
}

/// `model.name` -> train spec.
pub struct Registry {
    specs: BTreeMap<String, Box<dyn RunSpec>>,
}

impl Default for Registry {
    /// The built-in models (`llama3`).
    fn default() -> Self {
        let mut r = Self::empty();
        r.register(crate::llama::llama3_spec());
        r
    }
}

impl Registry {
    pub fn empty() -> Self {
        Self {
            specs: BTreeMap::new(),
        }
    }

    /// Add (or replace) a model.
    pub fn register<M: TrainableModel + 'static>(&mut self, spec: TrainSpec<M>) -> &mut Self {
        self.specs.insert(spec.name.clone(), Box::new(spec));
        self
    }

    /// The spec for `model.name`.
    pub fn get(&self, name: &str) -> Result<&dyn RunSpec> {
        self.specs
            .get(name)
            .map(|b| b.as_ref())
            .ok_or_else(|| Error::UnknownModel {
                name: name.to_string(),
                known: self.specs.keys().cloned().collect::<Vec<_>>().join(", "),
            })
    }

    pub fn names(&self) -> Vec<&str> {
        self.specs.keys().map(String::as_str).collect()
    }
}
