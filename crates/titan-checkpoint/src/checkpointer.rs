//! The [`Checkpointer`]: torchtitan's save/load policy over this crate's format. When to
//! save, what a last or seed save holds, sync or background writes, which checkpoint a run
//! starts from, and what it restores.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crate::config::{AsyncMode, CheckpointConfig};
use crate::hf::{self, StateDictAdapter};
use crate::layout::{self, step_dir_name};
use crate::load::{load_step_dir, verify_step_dir, LoadFilter, LoadedState};
use crate::request::{SaveRequest, TensorRequest};
use crate::save::{self, stage};
use crate::{Error, Result};

/// Where a run's state comes from (torchtitan's `load` precedence).
#[derive(Debug, Clone, PartialEq)]
pub enum LoadPlan {
    /// Nothing to load: initialize from scratch.
    Fresh,
    /// Resume from a complete checkpoint of `checkpoint.folder` (step 0 is model-only).
    Resume { step: u64, dir: PathBuf },
    /// Start from `initial_load_path` (or `hf_assets_path` for HF).
    Initial {
        path: PathBuf,
        model_only: bool,
        hf: bool,
    },
}

/// A background write in flight.
struct PendingWrite {
    step: u64,
    handle: JoinHandle<Result<()>>,
}

/// Saves and loads checkpoints under one `checkpoint.folder`.
pub struct Checkpointer {
    cfg: CheckpointConfig,
    pending: Option<PendingWrite>,
    hf_adapter: Option<Arc<dyn StateDictAdapter>>,
    /// Draw progress bars for foreground work (stderr must also be a terminal).
    interactive: bool,
}

impl Checkpointer {
    /// A checkpointer for a validated configuration.
    pub fn new(cfg: CheckpointConfig) -> Result<Self> {
        cfg.validate()?;
        if cfg.initial_load_in_hf && !cfg.initial_load_model_only {
            return Err(Error::Config {
                field: "initial_load_in_hf",
                value: "true".into(),
                fix: "Hugging Face folders hold the model only: also set checkpoint.initial_load_model_only = true".into(),
            });
        }
        Ok(Self {
            cfg,
            pending: None,
            hf_adapter: None,
            interactive: true,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &CheckpointConfig {
        &self.cfg
    }

    /// The adapter used by `initial_load_in_hf` and `last_save_in_hf`.
    pub fn set_hf_adapter(&mut self, adapter: Arc<dyn StateDictAdapter>) {
        self.hf_adapter = Some(adapter);
    }

    /// Whether foreground work may draw progress bars (default true; pass false on ranks
    /// other than 0, and in tests).
    pub fn set_interactive(&mut self, interactive: bool) {
        self.interactive = interactive;
    }

    /// The folder of `step`'s checkpoint.
    pub fn step_dir(&self, step: u64) -> PathBuf {
        self.cfg.folder.join(step_dir_name(step))
    }

    /// torchtitan's rule: step 1 with `enable_first_step_checkpoint`, the last step, and
    /// every `interval` steps; never when disabled or `load_only`.
    pub fn should_save(&self, step: u64, last_step: bool) -> bool {
        if !self.cfg.enable || self.cfg.load_only {
            return false;
        }
        (step == 1 && self.cfg.enable_first_step_checkpoint)
            || last_step
            || step % self.cfg.interval == 0
    }

    /// Whether a save of `step` holds the model only (seed checkpoint, or last step with
    /// `last_save_model_only`): the trainer may skip gathering optimizer state then.
    pub fn is_model_only_save(&self, step: u64, last_step: bool) -> bool {
        step == 0 || (last_step && self.cfg.last_save_model_only)
    }

    /// Save one rank's part of a step. The tensors are copied to host memory before this
    /// returns; with `async_mode = async` (and not the last step) the files are written by a
    /// background thread. With `world_size == 1` the step is also finalized; with more ranks
    /// the caller runs [`Checkpointer::wait`] on every rank, a barrier, then
    /// [`Checkpointer::finalize`] on rank 0.
    pub fn save(&mut self, req: SaveRequest) -> Result<()> {
        if !self.cfg.enable {
            return Err(Error::Config {
                field: "enable",
                value: "false".into(),
                fix: "set checkpoint.enable = true to save checkpoints (ask should_save() before saving)".into(),
            });
        }
        self.wait()?;
        let step = req.step;
        let model_only = self.is_model_only_save(step, req.last_step);
        // Only the process that finalizes exports (rank 0, or the single process).
        let hf_adapter = if model_only
            && self.cfg.last_save_in_hf
            && (req.rank == 0 || req.world_size == 1)
        {
            match &self.hf_adapter {
                Some(a) => Some(a.clone()),
                None => {
                    return Err(Error::Config {
                        field: "last_save_in_hf",
                        value: "true".into(),
                        fix: "call Checkpointer::set_hf_adapter with the model's StateDictAdapter before the last save".into(),
                    })
                }
            }
        } else {
            None
        };
        let sync = self.cfg.async_mode == AsyncMode::Disabled || req.last_step;
        let started = Instant::now();
        tracing::info!("Saving the checkpoint (or staging if async is enabled).");
        let staged = stage(req, model_only, self.cfg.export_dtype.dtype())?;
        let finalize_here = staged.world_size == 1;
        let folder = self.cfg.folder.clone();
        let keep = self.cfg.keep_latest_k;
        let interactive = self.interactive && sync;
        let job = move || -> Result<()> {
            save::write_rank(&folder, &staged, interactive)?;
            if finalize_here {
                save::finalize(
                    &folder,
                    staged.step,
                    keep,
                    hf_adapter.as_deref(),
                    interactive,
                )?;
            }
            Ok(())
        };
        if sync {
            job()?;
            tracing::info!(
                "Finished saving the checkpoint (or staging if async is enabled) in {:.2} seconds.",
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        tracing::info!(
            "Finished saving the checkpoint (or staging if async is enabled) in {:.2} seconds (training stall; step {step} is written in the background).",
            started.elapsed().as_secs_f64()
        );
        let handle = std::thread::Builder::new()
            .name(format!("titan-checkpoint-step-{step}"))
            .spawn(move || {
                let result = job();
                match &result {
                    Ok(()) => tracing::info!(
                        "Finished writing checkpoint step {step} in the background in {:.2} seconds.",
                        started.elapsed().as_secs_f64()
                    ),
                    Err(e) => tracing::error!("Background checkpoint write of step {step} failed: {e}"),
                }
                result
            })
            .map_err(Error::io("spawn writer thread for", self.step_dir(step)))?;
        self.pending = Some(PendingWrite { step, handle });
        Ok(())
    }

    /// Join the background write in flight, if any, and return its result.
    pub fn wait(&mut self) -> Result<()> {
        let Some(p) = self.pending.take() else {
            return Ok(());
        };
        let started = Instant::now();
        let result = p
            .handle
            .join()
            .map_err(|_| Error::WriterPanicked { step: p.step })?;
        let waited = started.elapsed().as_secs_f64();
        if waited > 0.01 {
            tracing::info!(
                "Waited {waited:.2} seconds for the background write of checkpoint step {}.",
                p.step
            );
        }
        result
    }

    /// The step of the background write in flight, if any.
    pub fn pending_step(&self) -> Option<u64> {
        self.pending.as_ref().map(|p| p.step)
    }

    /// Rank 0, after every rank's `save` and `wait` returned Ok (behind a barrier): merge the
    /// partial indexes, mark the step complete, rename it into place and purge old steps.
    pub fn finalize(&mut self, step: u64) -> Result<PathBuf> {
        self.wait()?;
        let adapter = if self.cfg.last_save_in_hf {
            self.hf_adapter.clone()
        } else {
            None
        };
        save::finalize(
            &self.cfg.folder,
            step,
            self.cfg.keep_latest_k,
            adapter.as_deref(),
            self.interactive,
        )
    }

    /// Steps of the complete checkpoints, ascending.
    pub fn complete_steps(&self) -> Result<Vec<u64>> {
        layout::complete_steps(&self.cfg.folder)
    }

    /// The newest complete checkpoint's step.
    pub fn latest_step(&self) -> Result<Option<u64>> {
        Ok(self.complete_steps()?.last().copied())
    }

    /// Decide where the run starts from: a complete checkpoint in `folder` wins (at
    /// `load_step`, or the latest), then `initial_load_path` (or `hf_assets_path` with
    /// `initial_load_in_hf`), else a fresh start.
    pub fn plan_load(&self) -> Result<LoadPlan> {
        if !self.cfg.enable {
            return Ok(LoadPlan::Fresh);
        }
        let steps = self.complete_steps()?;
        if let Some(&latest) = steps.last() {
            if self.cfg.initial_load_path.is_some() || self.cfg.initial_load_in_hf {
                tracing::warn!(
                    "checkpoint.folder {} holds checkpoints: resuming from them, ignoring initial_load_path / initial_load_in_hf",
                    self.cfg.folder.display()
                );
            }
            let step = if self.cfg.load_step < 0 {
                latest
            } else {
                self.cfg.load_step as u64
            };
            if !steps.contains(&step) {
                return Err(Error::StepNotFound {
                    step,
                    folder: self.cfg.folder.clone(),
                    available: steps,
                });
            }
            return Ok(LoadPlan::Resume {
                step,
                dir: self.step_dir(step),
            });
        }
        if self.cfg.load_step >= 0 {
            return Err(Error::StepNotFound {
                step: self.cfg.load_step as u64,
                folder: self.cfg.folder.clone(),
                available: steps,
            });
        }
        let hf = self.cfg.initial_load_in_hf;
        let path = match (&self.cfg.initial_load_path, &self.cfg.hf_assets_path) {
            (Some(p), _) => p.clone(),
            (None, Some(p)) if hf => p.clone(),
            (None, None) if hf => {
                return Err(Error::Config {
                    field: "initial_load_in_hf",
                    value: "true".into(),
                    fix: "set checkpoint.initial_load_path (or model.hf_assets_path) to the Hugging Face folder".into(),
                })
            }
            _ => return Ok(LoadPlan::Fresh),
        };
        if !path.is_dir() {
            return Err(Error::Config {
                field: "initial_load_path",
                value: path.display().to_string(),
                fix: "it must be an existing folder (a step-N checkpoint folder, or a Hugging Face folder with initial_load_in_hf)".into(),
            });
        }
        Ok(LoadPlan::Initial {
            path,
            model_only: self.cfg.initial_load_model_only,
            hf,
        })
    }

    fn filter(&self, model_only: bool) -> LoadFilter {
        LoadFilter {
            model_only,
            exclude: self.cfg.exclude_from_loading.clone(),
        }
    }

    /// Carry out a plan: `None` for a fresh start.
    pub fn load(&self, plan: &LoadPlan, wants: &[TensorRequest]) -> Result<Option<LoadedState>> {
        let started = Instant::now();
        let state = match plan {
            LoadPlan::Fresh => return Ok(None),
            LoadPlan::Resume { step, dir } => {
                load_step_dir(dir, wants, &self.filter(*step == 0), self.interactive)?
            }
            LoadPlan::Initial {
                path,
                model_only,
                hf: false,
            } => load_step_dir(path, wants, &self.filter(*model_only), self.interactive)?,
            LoadPlan::Initial { path, hf: true, .. } => self.load_hf(path, wants)?,
        };
        tracing::info!(
            "Finished loading the checkpoint from {} (step {}) in {:.2} seconds.",
            state.source.display(),
            state.step,
            started.elapsed().as_secs_f64()
        );
        Ok(Some(state))
    }

    fn load_hf(&self, path: &Path, wants: &[TensorRequest]) -> Result<LoadedState> {
        let adapter = self.hf_adapter.as_deref().ok_or_else(|| Error::Config {
            field: "initial_load_in_hf",
            value: "true".into(),
            fix:
                "call Checkpointer::set_hf_adapter with the model's StateDictAdapter before loading"
                    .into(),
        })?;
        let filter = self.filter(true);
        let (kept, mut skipped): (Vec<TensorRequest>, Vec<TensorRequest>) =
            wants.iter().cloned().partition(|r| {
                crate::keys::model_fqn(&r.name).is_some()
                    && !filter.exclude.iter().any(|e| e == crate::keys::MODEL)
            });
        let (tensors, more_skipped) = hf::load_hf(path, adapter, &kept, self.interactive)?;
        let mut skipped: Vec<String> = skipped.drain(..).map(|r| r.name).collect();
        skipped.extend(more_skipped);
        Ok(LoadedState {
            step: 0,
            source: path.to_path_buf(),
            model_only: true,
            tensors,
            blobs: Default::default(),
            skipped,
        })
    }

    /// [`Checkpointer::plan_load`] then [`Checkpointer::load`].
    pub fn resume(&self, wants: &[TensorRequest]) -> Result<Option<LoadedState>> {
        let plan = self.plan_load()?;
        self.load(&plan, wants)
    }

    /// Load the complete checkpoint of `step` from `folder` (step 0 is model-only).
    pub fn load_step(&self, step: u64, wants: &[TensorRequest]) -> Result<LoadedState> {
        let steps = self.complete_steps()?;
        if !steps.contains(&step) {
            return Err(Error::StepNotFound {
                step,
                folder: self.cfg.folder.clone(),
                available: steps,
            });
        }
        load_step_dir(
            &self.step_dir(step),
            wants,
            &self.filter(step == 0),
            self.interactive,
        )
    }

    /// Hash every file of `step`'s checkpoint against its index.
    pub fn verify(&self, step: u64) -> Result<()> {
        verify_step_dir(&self.step_dir(step), self.interactive)
    }
}

impl Drop for Checkpointer {
    /// Like torchtitan's `close()`: a background write is finished, not abandoned.
    fn drop(&mut self) {
        if let Err(e) = self.wait() {
            tracing::error!("checkpoint write failed: {e}");
        }
    }
}
