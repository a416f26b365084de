//! Checkpoints of a run: what goes in (model masters, optimizer moments, scheduler, data
//! loader, train state) and how a run resumes from one.

use std::collections::HashMap;
use std::path::PathBuf;

use titan_checkpoint::{keys, AsyncMode, CheckpointConfig, Checkpointer, ExportDtype, LoadPlan};
use titan_config::JobConfig;
use titan_optim::{LrScheduler, Optimizer, OptimizerState};

use crate::data::BatchSource;
use crate::model::TrainableModel;
use crate::strategy::{take_loaded, tensor_requests, Strategy};
use crate::train::TrainState;
use crate::{Error, Result};

/// `[checkpoint]` as the checkpoint crate takes it (`folder` resolved under `dump_folder`).
pub fn checkpoint_config(cfg: &JobConfig, _rank: usize, _world: usize) -> CheckpointConfig {
    let c = &cfg.checkpoint;
    CheckpointConfig {
        enable: c.enable,
        folder: PathBuf::from(&cfg.job.dump_folder).join(&c.folder),
        interval: c.interval as u64,
        keep_latest_k: c.keep_latest_k,
        load_step: c.load_step,
        async_mode: match c.async_mode {
            titan_config::AsyncMode::Disabled => AsyncMode::Disabled,
            _ => AsyncMode::Async,
        },
        last_save_model_only: c.last_save_model_only,
        last_save_in_hf: c.last_save_in_hf,
        export_dtype: match c.export_dtype {
            titan_config::ExportDtype::Float32 => ExportDtype::Float32,
            titan_config::ExportDtype::Bfloat16 => ExportDtype::Bfloat16,
            titan_config::ExportDtype::Float16 => ExportDtype::Float16,
        },
        exclude_from_loading: c.exclude_from_loading.clone(),
        initial_load_path: c.initial_load_path.as_ref().map(PathBuf::from),
        initial_load_model_only: c.initial_load_model_only,
        initial_load_in_hf: c.initial_load_in_hf,
        hf_assets_path: cfg.model.hf_assets_path.as_ref().map(PathBuf::from),
        enable_first_step_checkpoint: c.enable_first_step_checkpoint,
        create_seed_checkpoint: c.create_seed_checkpoint,
        load_only: c.load_only,
    }
}

fn from_json<T: serde::de::DeserializeOwned>(what: &str, v: &serde_json::Value) -> Result<T> {
    serde_json::from_value(v.clone()).map_err(|e| {
        Error::Msg(format!("the checkpoint's {what} state does not parse ({e}); add \"{what}\" to checkpoint.exclude_from_loading to start it fresh"))
    })
}

/// Load the checkpoint the config points at (latest in `folder`, or `initial_load_path`) into
/// the model, optimizer, scheduler and data loader. Returns the train state to continue from,
/// or `None` for a fresh start.
#[allow(clippy::too_many_arguments)]
pub fn restore<M: TrainableModel, S: Strategy<M>>(
    ck: &mut Checkpointer,
    _cfg: &JobConfig,
    strategy: &mut S,
    model: &mut M,
    optimizer: &mut Optimizer,
    lr_scheduler: &mut LrScheduler,
    data: &mut dyn BatchSource,
) -> Result<Option<TrainState>> {
    let plan = ck.plan_load()?;
    if matches!(plan, LoadPlan::Fresh) {
        return Ok(None);
    }
    // Ask for the model masters and both moments of every parameter this rank steps on.
    let local: Vec<(String, Vec<usize>)> = strategy
        .optimizer_params(model)
        .iter()
        .map(|p| (p.name().to_string(), p.shape().dims().to_vec()))
        .collect();
    let mut wants: Vec<(String, String, Vec<usize>)> = Vec::new();
    for (fqn, shape) in &local {
        wants.push((keys::model(fqn), fqn.clone(), shape.clone()));
    }
    let model_only = match &plan {
        LoadPlan::Initial { model_only, .. } => *model_only,
        LoadPlan::Resume { step, .. } => *step == 0,
        LoadPlan::Fresh => true,
    };
    if !model_only {
        for (fqn, shape) in &local {
            for which in ["exp_avg", "exp_avg_sq"] {
                wants.push((keys::optimizer(fqn, which), fqn.clone(), shape.clone()));
            }
        }
    }
    let requests = tensor_requests(strategy, model, wants);
    let Some(mut loaded) = ck.load(&plan, &requests)? else {
        return Ok(None);
    };
    let skipped: std::collections::HashSet<String> = loaded.skipped.iter().cloned().collect();

    // Model.
    let mut tensors: HashMap<String, candle_core::Tensor> = std::mem::take(&mut loaded.tensors);
    if !skipped.iter().any(|s| s == keys::MODEL) {
        let mut params = strategy.optimizer_params(model);
        for p in params.iter_mut() {
            let key = keys::model(p.name());
            if skipped.contains(&key) {
                continue;
            }
            let t = take_loaded(&mut tensors, &key)?;
            let device = p
                .master()
                .map(|m| m.device().clone())
                .unwrap_or(candle_core::Device::Cpu);
            p.set_master(t.to_device(&device)?)?;
        }
    }
    strategy.after_restore(model)?;

    let blobs = &loaded.blobs;
    let has = |k: &str| blobs.contains_key(k);
    // Optimizer.
    if !model_only && has(keys::OPTIMIZER) {
        let meta: titan_optim::state::OptimizerStateMeta =
            from_json("optimizer", &blobs[keys::OPTIMIZER])?;
        let mut opt_tensors = std::collections::BTreeMap::new();
        let device = model
            .params()
            .first()
            .and_then(|p| p.master().map(|m| m.device().clone()))
            .unwrap_or(candle_core::Device::Cpu);
        // Rank 0 wrote the step counts of every parameter; this rank restores those it holds.
        let held: std::collections::HashSet<&str> = local.iter().map(|(n, _)| n.as_str()).collect();
        let mut meta = meta;
        meta.steps.retain(|fqn, _| held.contains(fqn.as_str()));
        for fqn in meta.steps.keys() {
            for (which, key) in [
                ("exp_avg", titan_optim::state::exp_avg_key(fqn)),
                ("exp_avg_sq", titan_optim::state::exp_avg_sq_key(fqn)),
            ] {
                let t = take_loaded(&mut tensors, &keys::optimizer(fqn, which))?;
                opt_tensors.insert(key, t.to_device(&device)?);
            }
        }
        optimizer.load_state_dict(OptimizerState {
            tensors: opt_tensors,
            meta,
        })?;
    }
    if has(keys::LR_SCHEDULER) {
        lr_scheduler.load_state(from_json("lr_scheduler", &blobs[keys::LR_SCHEDULER])?);
    }
    let dl_key = keys::dataloader(strategy.dp_rank());
    let saved_dp = blobs
        .get(&dl_key)
        .and_then(|v| v.get("dp_world_size"))
        .and_then(|v| v.as_u64());
    if saved_dp.is_some_and(|n| n as usize != strategy.dp_world_size()) {
        // A data stream split N ways cannot continue split M ways; the model, optimizer and
        // schedule are resharded, the data restarts on the new split.
        tracing::warn!(
            "the checkpoint's data loader state is for {} data-parallel ranks, this run has {}: the data starts from the beginning of this rank's new shard",
            saved_dp.unwrap_or(0),
            strategy.dp_world_size()
        );
    } else if has(&dl_key) {
        data.load_state(&blobs[&dl_key])?;
    } else if has(keys::TRAIN_STATE) && !skipped.iter().any(|s| s == keys::DATALOADER) {
        tracing::warn!("the checkpoint has no data loader state for data-parallel rank {}: its data starts from the beginning", strategy.dp_rank());
    }
    let state = if has(keys::TRAIN_STATE) {
        from_json::<TrainState>("train_state", &blobs[keys::TRAIN_STATE])?
    } else {
        TrainState {
            step: 0,
            tokens_seen: 0,
        }
    };
    tracing::info!(
        "Resuming training from step {} ({} tokens seen)",
        state.step,
        state.tokens_seen
    );
    Ok(Some(state))
}
