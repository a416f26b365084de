//! The training loop (torchtitan's `Trainer.train`): build every component from the config,
//! resume from the latest checkpoint, then step: fetch the microbatches, forward and backward
//! each, reduce, clip, step the optimizer, log, validate and save.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::DType;
use titan_checkpoint::{keys, Checkpointer, SaveRequest};
use titan_config::JobConfig;
use titan_core::{ActivationCheckpoint, Executor, MicrobatchInfo};
use titan_data::Batch;
use titan_metrics::{
    MetricsConfig, MetricsLogger, StartupInfo, StepMetrics, ValidationMetrics, WindowStats,
};
use titan_optim::{clip_coefficient, GradScale, LrScheduler, Optimizer, OptimizerState};

use crate::data::{BatchSource, DataRequest};
use crate::device::choose_device;
use crate::model::TrainableModel;
use crate::spec::TrainSpec;
use crate::strategy::{sharded_entries, SingleDevice, Strategy};
use crate::{Error, Result, RunContext, TrainOutcome};

/// What the checkpoint's `train_state` blob holds.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct TrainState {
    pub step: u64,
    pub tokens_seen: u64,
}

pub(crate) fn ac_policy(cfg: &JobConfig) -> Result<ActivationCheckpoint> {
    use titan_config::{AcMode, SelectiveAcOption};
    let ac = &cfg.activation_checkpoint;
    Ok(match ac.mode {
        AcMode::None => ActivationCheckpoint::None,
        AcMode::Full => ActivationCheckpoint::Full,
        AcMode::Selective => match ac.selective_ac_option {
            SelectiveAcOption::Op => ActivationCheckpoint::Op,
            SelectiveAcOption::EveryNthLayer(n) if n <= 1 => ActivationCheckpoint::Full,
            SelectiveAcOption::EveryNthLayer(n) => ActivationCheckpoint::EveryNth(n),
        },
        AcMode::MemoryBudget => {
            return Err(Error::Msg(
                "activation_checkpoint.mode = \"memory_budget\" needs a compiler; use \"full\" or \"selective\"".into(),
            ))
        }
    })
}

/// Microbatches per optimizer step: `global_batch_size / (local_batch_size * dp)`.
pub fn grad_accum_steps(cfg: &JobConfig, dp: usize) -> Result<usize> {
    let local = cfg.training.local_batch_size;
    let per_step = local * dp;
    match cfg.training.global_batch_size {
        g if g < 0 => Ok(1),
        g => {
            let g = g as usize;
            if g == 0 || g % per_step != 0 {
                return Err(Error::BatchSize(format!(
                    "training.global_batch_size = {g} is not a positive multiple of local_batch_size ({local}) x data-parallel degree ({dp}) = {per_step}"
                )));
            }
            Ok(g / per_step)
        }
    }
}

/// Train with `spec` on one process.
pub fn train<M: TrainableModel + 'static>(
    spec: &TrainSpec<M>,
    cfg: &JobConfig,
    ctx: &RunContext,
) -> Result<TrainOutcome> {
    let mut strategy = SingleDevice::default();
    train_with(spec, cfg, ctx, &mut strategy)
}

/// Train with `spec` under a data-parallel `strategy`.
pub fn train_with<M: TrainableModel + 'static, S: Strategy<M>>(
    spec: &TrainSpec<M>,
    cfg: &JobConfig,
    ctx: &RunContext,
    strategy: &mut S,
) -> Result<TrainOutcome> {
    check_config(cfg)?;
    let device = choose_device(cfg, ctx.local_rank)?;
    train_checked(spec, cfg, ctx, strategy, device)
}

/// [`train_with`] on a device the caller already opened (a distributed launch opens it once
/// for its process group and its training loop).
pub fn train_on<M: TrainableModel + 'static, S: Strategy<M>>(
    spec: &TrainSpec<M>,
    cfg: &JobConfig,
    ctx: &RunContext,
    strategy: &mut S,
    device: crate::device::DeviceChoice,
) -> Result<TrainOutcome> {
    check_config(cfg)?;
    train_checked(spec, cfg, ctx, strategy, device)
}

/// Validation, unsupported settings (errors) and settings Titan ignores (warnings).
fn check_config(cfg: &JobConfig) -> Result<()> {
    cfg.validate()?;
    cfg.check_supported()?;
    for ignored in cfg.ignored_settings() {
        tracing::warn!(
            "{} = {} has no effect in Titan: {}",
            ignored.key,
            ignored.value,
            ignored.why
        );
    }
    Ok(())
}

fn train_checked<M: TrainableModel + 'static, S: Strategy<M>>(
    spec: &TrainSpec<M>,
    cfg: &JobConfig,
    ctx: &RunContext,
    strategy: &mut S,
    device: crate::device::DeviceChoice,
) -> Result<TrainOutcome> {
    let dump_folder = PathBuf::from(&cfg.job.dump_folder);
    if strategy.rank() == 0 {
        let path = cfg.save_to_dump_folder()?;
        tracing::info!("Saved the merged config to {}", path.display());
    }
    let seed = cfg.debug.seed.unwrap_or(0);
    let seq_len = cfg.training.seq_len;

    // Tokenizer, model (shape-only first), weights.
    let tokenizer = (spec.build_tokenizer)(cfg)?;
    let mut model = (spec.build_model)(cfg, Some(&tokenizer))?;
    model.prepare(
        &device.device,
        device.compute_dtype,
        seq_len.max(cfg.validation.seq_len),
    )?;
    strategy.init_weights(&mut model, seed, &device.device, device.compute_dtype)?;
    let act_bytes = device.compute_dtype.size_in_bytes();
    let mut summary = model.summary(seq_len, act_bytes);
    summary.flavor = cfg.model.flavor.clone();
    let peak_flops = if device.is_cuda() {
        titan_metrics::peak_flops(&device.name)
    } else {
        None
    };
    let metrics_cfg = MetricsConfig {
        log_freq: cfg.metrics.log_freq as u64,
        enable_tensorboard: cfg.metrics.enable_tensorboard,
        save_tb_folder: cfg.metrics.save_tb_folder.clone(),
        enable_jsonl: cfg.metrics.enable_jsonl,
        dump_folder: dump_folder.clone(),
        rank: strategy.rank() as u64,
        metrics_rank: 0,
        rank_0_only: !cfg.metrics.save_for_all_ranks,
        total_steps: cfg.training.steps as u64,
        start_step: 0,
        enable_progress: ctx.progress,
        enable_plot: cfg.metrics.enable_plot,
        plot_title: format!("{} {}", summary.name, summary.flavor),
        color: if cfg.metrics.disable_color_printing {
            titan_metrics::ColorChoice::Never
        } else {
            titan_metrics::ColorChoice::Auto
        },
        non_data_parallel_size: 1,
    };
    let palette = titan_metrics::Palette::for_choice(metrics_cfg.color);
    titan_metrics::log_startup(
        &palette,
        &StartupInfo {
            model_name: summary.name.clone(),
            flavor: summary.flavor.clone(),
            total_params: summary.num_params,
            flops_per_token: summary.flops_per_token as f64,
            peak_flops,
            device_type: if device.is_cuda() {
                "cuda".into()
            } else {
                "cpu".into()
            },
            device_name: device.name.clone(),
            capacity_bytes: device.capacity_bytes,
            model_memory: None,
        },
    )?;

    let ac = ac_policy(cfg)?;
    let executor = Executor::new(ac);
    let mut optimizer = (spec.build_optimizer)(cfg)?;
    let mut lr_scheduler = (spec.build_lr_scheduler)(cfg)?;
    let datasets = (spec.build_datasets)();
    let (dp_rank, dp_world_size) = (strategy.dp_rank(), strategy.dp_world_size());
    let data_request = |validation: bool| DataRequest {
        config: cfg,
        tokenizer: tokenizer.clone(),
        registry: &datasets,
        dp_rank,
        dp_world_size,
        emit_positions: false,
        validation,
        vocab_size: summary.vocab_size,
    };
    let mut data = (spec.build_data)(&data_request(false))?;
    let grad_accum = grad_accum_steps(cfg, strategy.dp_world_size())?;

    // Resume.
    let mut checkpointer = if cfg.checkpoint.enable {
        Some(Checkpointer::new(crate::checkpointing::checkpoint_config(
            cfg,
            strategy.rank(),
            strategy.world_size(),
        ))?)
    } else {
        None
    };
    if let (Some(ck), Some(adapter)) = (checkpointer.as_mut(), spec.hf_adapter.as_ref()) {
        ck.set_hf_adapter(adapter(&model)?);
    }
    if let Some(ck) = checkpointer.as_mut() {
        // Progress bars for saves and loads on the first rank only.
        ck.set_interactive(ctx.progress && strategy.rank() == 0);
    }
    let mut state = TrainState {
        step: 0,
        tokens_seen: 0,
    };
    if let Some(ck) = checkpointer.as_mut() {
        if let Some(s) = crate::checkpointing::restore(
            ck,
            cfg,
            strategy,
            &mut model,
            &mut optimizer,
            &mut lr_scheduler,
            data.as_mut(),
        )? {
            state = s;
        }
    }
    let mut metrics = MetricsLogger::new(
        MetricsConfig {
            start_step: state.step,
            ..metrics_cfg
        },
        summary.flops_per_token as f64,
        peak_flops,
    )?;
    if cfg.checkpoint.create_seed_checkpoint {
        let ck = checkpointer.as_mut().ok_or_else(|| {
            Error::Msg("checkpoint.create_seed_checkpoint needs checkpoint.enable = true".into())
        })?;
        save(
            ck,
            strategy,
            &mut model,
            &optimizer,
            &lr_scheduler,
            data.as_ref(),
            state,
            false,
        )?;
        ck.wait()?;
        tracing::info!(
            "Created the seed checkpoint (step 0) in {}",
            ck.step_dir(0).display()
        );
        return Ok(TrainOutcome {
            steps: 0,
            final_loss: f64::NAN,
            losses: Vec::new(),
            plot: None,
            dump_folder,
            model_summary: summary,
        });
    }
    tracing::info!(
        "Training starts at step {}: {} steps, local batch {} x seq {}, {} microbatch(es) per step, activation checkpointing {:?}",
        state.step + 1,
        cfg.training.steps,
        cfg.training.local_batch_size,
        seq_len,
        grad_accum,
        ac
    );
    let total_steps = cfg.training.steps as u64;
    let mut phases = PhaseTimes::from_env(
        &device.device,
        StepTrace::from_env(&device.device, dump_folder.join("trace"), strategy.rank())?,
    );
    let mut losses = Vec::new();
    let mut window = Window::start(data.wait_time().as_secs_f64());
    let mut last_loss = f64::NAN;
    while state.step < total_steps {
        let step = state.step + 1;
        phases.start(step)?;
        // All microbatches first, so the loss can be normalized by the global valid tokens.
        let mut batches: Vec<Batch> = Vec::with_capacity(grad_accum);
        for _ in 0..grad_accum {
            match data.next_batch()? {
                Some(b) => batches.push(b),
                None => {
                    return Err(Error::DataExhausted {
                        dataset: data.name(),
                        step,
                        steps: total_steps,
                    })
                }
            }
        }
        let local_valid: usize = batches
            .iter()
            .map(|b| b.labels.iter().filter(|&&l| l >= 0).count())
            .sum();
        let global_valid = strategy.all_reduce_sum(local_valid as f64)?;
        if global_valid == 0.0 {
            return Err(Error::Msg(format!(
                "step {step}: the batch has no token with a label"
            )));
        }
        let scale = 1.0 / global_valid;
        phases.mark("data+tokens")?;
        let mut local_loss = 0f64;
        for (i, b) in batches.iter().enumerate() {
            let input = model.make_input(b)?;
            let target = model.make_target(b)?;
            let mb = MicrobatchInfo {
                index: i,
                count: grad_accum,
                backward: true,
            };
            let report = executor.forward_backward(
                &mut model,
                &input,
                &target,
                scale,
                strategy.hooks(),
                mb,
            )?;
            local_loss += report.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        }
        phases.mark("forward+backward")?;
        let tokens: u64 = batches.iter().map(|b| b.num_tokens() as u64).sum();
        let loss = strategy.all_reduce_sum(local_loss)?;
        phases.mark("loss all-reduce")?;
        // This rank's mean token loss, maxed over ranks (torchtitan's global_max_loss).
        let max_loss =
            strategy.all_reduce_max(local_loss * global_valid / local_valid.max(1) as f64)?;
        let grad_norm = strategy.global_grad_sq_norm(&mut model)?.sqrt();
        if !loss.is_finite() {
            return Err(Error::NonFinite {
                step,
                what: "loss",
                value: loss,
            });
        }
        if !grad_norm.is_finite() {
            return Err(Error::NonFinite {
                step,
                what: "grad_norm",
                value: grad_norm,
            });
        }
        phases.mark("max loss + grad norm")?;
        let lr = lr_scheduler.lr_at(step);
        {
            let refresh_in_step = strategy.refresh_in_step();
            let compute_dtype = device.compute_dtype;
            // Clipping folded into the step (one pass over the gradients instead of two);
            // the same update as clip-then-step.
            let scale = GradScale::Host(clip_coefficient(cfg.training.max_norm, grad_norm)?);
            let mut step_part = |params: &mut [&mut titan_core::Param]| -> Result<()> {
                if refresh_in_step {
                    optimizer.step_and_refresh_with_scale(params, lr, compute_dtype, &scale)?;
                } else {
                    optimizer.step_with_scale(params, lr, &scale)?;
                }
                Ok(())
            };
            strategy.optimizer_step(&mut model, step < total_steps, &mut step_part)?;
        }
        lr_scheduler.step();
        strategy.after_step(&mut model)?;
        phases.mark("optimizer")?;
        phases.finish(step)?;
        state = TrainState {
            step,
            tokens_seen: state.tokens_seen + tokens * strategy.dp_world_size() as u64,
        };
        last_loss = loss;
        losses.push((step, loss));
        window.add(tokens, grad_accum);
        metrics.set_progress(step);

        if metrics.should_log(step) {
            let w = window.finish(data.wait_time().as_secs_f64());
            metrics.log_step(&StepMetrics {
                step,
                loss,
                max_loss,
                grad_norm,
                lr,
                tokens_seen: state.tokens_seen,
                window: w,
                memory: crate::device::memory_stats(&device),
                extra: Vec::new(),
            })?;
            window = Window::start(data.wait_time().as_secs_f64());
        }
        if cfg.validation.enable
            && cfg.validation.freq > 0
            && step % cfg.validation.freq as u64 == 0
        {
            let val_loss = validate(
                spec,
                cfg,
                &executor,
                &mut model,
                strategy,
                &data_request(true),
            )?;
            metrics.log_validation(&ValidationMetrics::new(step, val_loss))?;
        }
        if let Some(ck) = checkpointer.as_mut() {
            let last = step == total_steps;
            if ck.should_save(step, last) {
                save(
                    ck,
                    strategy,
                    &mut model,
                    &optimizer,
                    &lr_scheduler,
                    data.as_ref(),
                    state,
                    last,
                )?;
            }
        }
    }
    if let Some(ck) = checkpointer.as_mut() {
        ck.wait()?;
    }
    let plot = metrics.finish()?;
    if state.step > 0 {
        tracing::info!(
            "Training finished at step {}: final loss {:.5}",
            state.step,
            last_loss
        );
    }
    Ok(TrainOutcome {
        steps: state.step,
        final_loss: last_loss,
        losses,
        plot,
        dump_folder,
        model_summary: summary,
    })
}

/// Token-weighted mean loss over `validation.steps` batches of the validation split.
fn validate<M: TrainableModel + 'static, S: Strategy<M>>(
    spec: &TrainSpec<M>,
    cfg: &JobConfig,
    executor: &Executor,
    model: &mut M,
    strategy: &mut S,
    request: &DataRequest<'_>,
) -> Result<f64> {
    let mut data = (spec.build_data)(request)?;
    let limit = if cfg.validation.steps < 0 {
        usize::MAX
    } else {
        cfg.validation.steps as usize
    };
    let (mut loss_sum, mut tokens) = (0f64, 0f64);
    for _ in 0..limit {
        let Some(b) = data.next_batch()? else { break };
        let valid = b.labels.iter().filter(|&&l| l >= 0).count() as f64;
        if valid == 0.0 {
            continue;
        }
        let input = model.make_input(&b)?;
        let target = model.make_target(&b)?;
        // Scale 1: the summed token loss of this batch.
        let l = executor.forward_loss(model, &input, &target, 1.0, strategy.hooks())?;
        loss_sum += l.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        tokens += valid;
    }
    let loss_sum = strategy.all_reduce_sum(loss_sum)?;
    let tokens = strategy.all_reduce_sum(tokens)?;
    if tokens == 0.0 {
        return Err(Error::Msg(format!(
            "validation dataset {:?} gave no tokens; check validation.dataset / validation.dataset_path",
            cfg.validation.dataset
        )));
    }
    Ok(loss_sum / tokens)
}

/// Write a checkpoint of everything needed to resume.
#[allow(clippy::too_many_arguments)]
pub(crate) fn save<M: TrainableModel, S: Strategy<M>>(
    ck: &mut Checkpointer,
    strategy: &mut S,
    model: &mut M,
    optimizer: &Optimizer,
    lr_scheduler: &LrScheduler,
    data: &dyn BatchSource,
    state: TrainState,
    last_step: bool,
) -> Result<()> {
    let model_only = ck.is_model_only_save(state.step, last_step);
    let mut req = SaveRequest::single(state.step, last_step);
    req.rank = strategy.rank();
    req.world_size = strategy.world_size();
    // The masters this rank holds: whole parameters, or its shards under FSDP.
    let model_tensors: Vec<(String, String, candle_core::Tensor)> = strategy
        .optimizer_params(model)
        .iter()
        .filter_map(|p| {
            p.master()
                .map(|m| (keys::model(p.name()), p.name().to_string(), m.clone()))
        })
        .collect();
    let model: &M = model;
    req.tensors = sharded_entries(strategy, model, model_tensors);
    if !model_only {
        let OptimizerState { tensors, meta } = optimizer.state_dict();
        let opt_tensors = tensors.into_iter().map(|(k, t)| {
            let (fqn, which) = split_state_key(&k);
            (keys::optimizer(fqn, which), fqn.to_string(), t)
        });
        req.tensors.extend(sharded_entries(
            strategy,
            model,
            opt_tensors.collect::<Vec<_>>(),
        ));
        let mut blobs = BTreeMap::new();
        // Shared state once (rank 0); every data-parallel rank its own loader position.
        if strategy.rank() == 0 {
            blobs.insert(keys::OPTIMIZER.to_string(), to_json(&meta)?);
            blobs.insert(
                keys::LR_SCHEDULER.to_string(),
                to_json(&lr_scheduler.state())?,
            );
            blobs.insert(keys::TRAIN_STATE.to_string(), to_json(&state)?);
        }
        blobs.insert(keys::dataloader(strategy.dp_rank()), data.state()?);
        req.blobs = blobs;
    }
    ck.save(req)?;
    if strategy.world_size() > 1 {
        ck.wait()?;
        strategy.barrier()?;
        if strategy.rank() == 0 {
            ck.finalize(state.step)?;
        }
        strategy.barrier()?;
    }
    Ok(())
}

/// `<fqn>.exp_avg_sq` -> (`<fqn>`, `exp_avg_sq`).
pub(crate) fn split_state_key(k: &str) -> (&str, &str) {
    for suffix in [
        titan_optim::state::EXP_AVG_SQ_SUFFIX,
        titan_optim::state::EXP_AVG_SUFFIX,
    ] {
        if let Some(fqn) = k.strip_suffix(suffix) {
            return (fqn, &suffix[1..]);
        }
    }
    (k, "")
}

pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> Result<serde_json::Value> {
    serde_json::to_value(v).map_err(|e| Error::Msg(format!("serializing checkpoint state: {e}")))
}

/// Tokens, steps and times since the last log line.
struct Window {
    start: Instant,
    wait_at_start: f64,
    tokens: u64,
    steps: u64,
    batches: u64,
}

impl Window {
    fn start(wait_secs: f64) -> Self {
        Self {
            start: Instant::now(),
            wait_at_start: wait_secs,
            tokens: 0,
            steps: 0,
            batches: 0,
        }
    }
    fn add(&mut self, tokens: u64, batches: usize) {
        self.tokens += tokens;
        self.steps += 1;
        self.batches += batches as u64;
    }
    fn finish(&self, wait_secs: f64) -> WindowStats {
        WindowStats {
            tokens: self.tokens,
            steps: self.steps,
            elapsed_secs: self.start.elapsed().as_secs_f64(),
            data_loading_secs: (wait_secs - self.wait_at_start).max(0.0),
            batches: self.batches,
        }
    }
}

/// `TITAN_TRACE_STEP=N`: a device timeline of step N (titan-parallel's [`trace`]: NCCL
/// collectives, FSDP unit hooks, the phases below), summarized in the log and written as Chrome
/// trace-event JSON to `{dump_folder}/trace/step{N}_rank{r}.json` (open in ui.perfetto.dev).
/// Records only on CUDA with the NCCL backend built in.
///
/// [`trace`]: titan_parallel::trace
struct StepTrace {
    step: Option<u64>,
    device: candle_core::Device,
    dir: PathBuf,
    rank: usize,
    open: bool,
}

impl StepTrace {
    fn from_env(device: &candle_core::Device, dir: PathBuf, rank: usize) -> Result<Self> {
        let step = match std::env::var("TITAN_TRACE_STEP") {
            Err(_) => None,
            Ok(v) if v.is_empty() => None,
            Ok(v) => Some(v.parse::<u64>().ok().filter(|&s| s > 0).ok_or_else(|| {
                Error::Msg(format!(
                    "TITAN_TRACE_STEP={v:?}: expected the number of the step to trace (1 or more)"
                ))
            })?),
        };
        Ok(Self {
            step,
            device: device.clone(),
            dir,
            rank,
            open: false,
        })
    }

    fn start(&mut self, step: u64) -> Result<()> {
        if self.step == Some(step) {
            self.device.synchronize()?;
            self.open = titan_parallel::trace::begin(&self.device).map_err(trace_err)?;
            if !self.open {
                tracing::warn!(
                    "TITAN_TRACE_STEP={step}: device timelines need CUDA and the NCCL backend (feature `nccl`); not traced"
                );
            }
        }
        Ok(())
    }

    fn mark(&mut self, phase: &'static str) -> Result<()> {
        if self.open {
            titan_parallel::trace::mark(&self.device, || format!("{phase} done"))
                .map_err(trace_err)?;
        }
        Ok(())
    }

    fn finish(&mut self, step: u64) -> Result<()> {
        if !std::mem::take(&mut self.open) {
            return Ok(());
        }
        let Some(timeline) = titan_parallel::trace::end(&self.device).map_err(trace_err)? else {
            return Ok(());
        };
        for line in timeline.summary() {
            tracing::info!("step {step} trace: {line}");
        }
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| Error::Msg(format!("creating {}: {e}", self.dir.display())))?;
        let path = self.dir.join(format!("step{step}_rank{}.json", self.rank));
        std::fs::write(&path, timeline.chrome_json(self.rank))
            .map_err(|e| Error::Msg(format!("writing {}: {e}", path.display())))?;
        tracing::info!("step {step} trace written to {}", path.display());
        Ok(())
    }
}

fn trace_err(e: titan_parallel::Error) -> Error {
    Error::Msg(format!("step trace (TITAN_TRACE_STEP): {e}"))
}

/// Per-step phase times (`TITAN_PHASE_TIMES=1`): the device is synchronized at each phase
/// boundary, so the phases add up to the step, at the cost of the overlap between them (use
/// it to find where time goes, not to measure throughput). The same phase boundaries mark the
/// traced step's timeline ([`StepTrace`]).
struct PhaseTimes {
    device: Option<candle_core::Device>,
    at: std::time::Instant,
    marks: Vec<(&'static str, f64)>,
    trace: StepTrace,
}

impl PhaseTimes {
    fn from_env(device: &candle_core::Device, trace: StepTrace) -> Self {
        let on = std::env::var("TITAN_PHASE_TIMES").is_ok_and(|v| v == "1");
        Self {
            device: on.then(|| device.clone()),
            at: std::time::Instant::now(),
            marks: Vec::new(),
            trace,
        }
    }

    fn start(&mut self, step: u64) -> Result<()> {
        self.trace.start(step)?;
        if let Some(d) = &self.device {
            d.synchronize()?;
            self.marks.clear();
            self.at = std::time::Instant::now();
        }
        Ok(())
    }

    fn mark(&mut self, phase: &'static str) -> Result<()> {
        self.trace.mark(phase)?;
        if let Some(d) = &self.device {
            d.synchronize()?;
            let now = std::time::Instant::now();
            self.marks
                .push((phase, now.duration_since(self.at).as_secs_f64() * 1e3));
            self.at = now;
        }
        Ok(())
    }

    fn finish(&mut self, step: u64) -> Result<()> {
        if self.device.is_some() {
            let total: f64 = self.marks.iter().map(|(_, ms)| ms).sum();
            let parts: Vec<String> = self
                .marks
                .iter()
                .map(|(p, ms)| format!("{p} {ms:.1}"))
                .collect();
            tracing::info!("step {step} phases (ms): {} = {total:.1}", parts.join(", "));
        }
        self.trace.finish(step)
    }
}
