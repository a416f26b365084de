//! The data loader: builds a rank's batch stream from a dataset name, prepares batches ahead on
//! a background thread, measures how long the caller waits, and saves/restores its position.
//!
//! Prefetching reads ahead, so each prefetched batch travels with the producer's state *after*
//! making it; the loader remembers the state of the last batch it handed out. `state()` is
//! therefore exactly where an uninterrupted run would be, no matter how far the thread got.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::batch::Batch;
use crate::config::DataLoaderConfig;
use crate::error::{Error, Result};
use crate::producer::{Plan, PlanInput, Producer};
use crate::registry::{Dataset, DatasetRegistry};
use crate::shard::contiguous_shard;
use crate::state::LoaderState;
use crate::synthetic::SyntheticTokens;
use crate::tokenizer::Tokenizer;

type Item = Result<Option<(Batch, LoaderState)>>;

/// A rank's stream of packed batches.
pub struct DataLoader {
    plan: Arc<Plan>,
    prefetch: usize,
    /// State as of the last batch handed out.
    state: LoaderState,
    run: Run,
    wait_total: Duration,
    last_wait: Duration,
}

enum Run {
    /// Nothing started since construction or `load_state`.
    Idle,
    Inline(Box<Producer>),
    Prefetching(Prefetcher),
    /// A finite dataset ran out.
    Done,
    Failed(String),
}

struct Prefetcher {
    receiver: Option<Receiver<Item>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receiver fails the thread's pending send, so it exits promptly.
        drop(self.receiver.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the data prefetch thread panicked");
            }
        }
    }
}

impl DataLoader {
    /// Opens `cfg.dataset` from `registry`, takes this rank's contiguous block of records, and
    /// gets ready to tokenize with `tokenizer` (which must define BOS and EOS for text data).
    pub fn new(
        cfg: &DataLoaderConfig,
        tokenizer: Arc<Tokenizer>,
        registry: &DatasetRegistry,
    ) -> Result<Self> {
        cfg.validate()?;
        let dataset = cfg.dataset.to_lowercase();
        let input = match registry.open(&dataset, cfg.dataset_path.as_deref(), &cfg.text_field)? {
            Dataset::Synthetic => {
                let vocab_size = cfg.vocab_size.unwrap_or_else(|| tokenizer.vocab_size());
                tracing::info!(
                    "Preparing synthetic dataset: random ids below {vocab_size}, seed {}",
                    cfg.seed
                );
                PlanInput::Synthetic(SyntheticTokens {
                    seed: cfg.seed,
                    vocab_size: vocab_size as u64,
                    rank: cfg.dp_rank as u64,
                    world: cfg.dp_world_size as u64,
                })
            }
            Dataset::Documents(source) => {
                tokenizer.require_bos()?;
                tokenizer.require_eos()?;
                let records = source.num_records();
                let shard = contiguous_shard(records, cfg.dp_rank, cfg.dp_world_size);
                if shard.is_empty() {
                    return Err(Error::EmptyShard {
                        dataset,
                        records,
                        rank: cfg.dp_rank,
                        world_size: cfg.dp_world_size,
                    });
                }
                tracing::info!(
                    "Preparing {dataset} dataset from {}: {records} records, data-parallel rank {} of {} reads records {}..{}",
                    source.describe(),
                    cfg.dp_rank,
                    cfg.dp_world_size,
                    shard.start,
                    shard.end
                );
                PlanInput::Text {
                    source,
                    tokenizer: Arc::clone(&tokenizer),
                    shard,
                }
            }
        };
        let plan = Plan {
            dataset: dataset.clone(),
            seq_len: cfg.seq_len,
            batch_size: cfg.local_batch_size,
            dp_rank: cfg.dp_rank,
            dp_world_size: cfg.dp_world_size,
            infinite: cfg.infinite,
            emit_positions: cfg.emit_positions,
            eos_id: tokenizer.eos_id(),
            vocab_limit: cfg.vocab_size,
            input,
        };
        Ok(DataLoader {
            plan: Arc::new(plan),
            prefetch: cfg.prefetch,
            state: LoaderState::initial(&dataset, cfg.dp_rank, cfg.dp_world_size),
            run: Run::Idle,
            wait_total: Duration::ZERO,
            last_wait: Duration::ZERO,
        })
    }

    /// The next batch; `Ok(None)` when a finite dataset is used up. The time this call spends
    /// waiting for data is added to [`DataLoader::wait_time`].
    pub fn next_batch(&mut self) -> Result<Option<Batch>> {
        let started = Instant::now();
        let item = self.fetch();
        self.last_wait = started.elapsed();
        self.wait_total += self.last_wait;
        match item {
            Ok(Some((batch, state))) => {
                self.state = state;
                Ok(Some(batch))
            }
            Ok(None) => {
                self.state.exhausted = true;
                self.run = Run::Done;
                Ok(None)
            }
            Err(e) => {
                self.run = Run::Failed(e.to_string());
                Err(e)
            }
        }
    }

    fn fetch(&mut self) -> Item {
        if matches!(self.run, Run::Idle) {
            self.start();
        }
        match &mut self.run {
            Run::Idle | Run::Done => Ok(None),
            Run::Failed(message) => Err(Error::LoaderFailed(message.clone())),
            Run::Inline(producer) => Ok(producer
                .next_batch()?
                .map(|batch| (batch, producer.state()))),
            Run::Prefetching(prefetcher) => {
                match prefetcher.receiver.as_ref().map(Receiver::recv) {
                    Some(Ok(item)) => item,
                    _ => Err(Error::LoaderFailed(
                        "the prefetch thread stopped unexpectedly".into(),
                    )),
                }
            }
        }
    }

    fn start(&mut self) {
        if self.state.exhausted {
            self.run = Run::Done;
            return;
        }
        let producer = Producer::new(Arc::clone(&self.plan), &self.state);
        if self.prefetch == 0 {
            self.run = Run::Inline(Box::new(producer));
            return;
        }
        let (sender, receiver) = sync_channel::<Item>(self.prefetch);
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let spawned = std::thread::Builder::new()
            .name(format!("titan-data-{}", self.plan.dp_rank))
            .spawn(move || {
                let mut producer = producer;
                while !thread_stop.load(Ordering::Relaxed) {
                    let item = producer
                        .next_batch()
                        .map(|b| b.map(|batch| (batch, producer.state())));
                    let last = !matches!(item, Ok(Some(_)));
                    if sender.send(item).is_err() || last {
                        break;
                    }
                }
            });
        self.run = match spawned {
            Ok(thread) => Run::Prefetching(Prefetcher {
                receiver: Some(receiver),
                stop,
                thread: Some(thread),
            }),
            Err(e) => {
                tracing::warn!(
                    "cannot start the data prefetch thread ({e}); preparing batches inline"
                );
                Run::Inline(Box::new(Producer::new(Arc::clone(&self.plan), &self.state)))
            }
        };
    }

    /// State as of the last batch handed out (not what the prefetch thread has read ahead).
    pub fn state(&self) -> LoaderState {
        self.state.clone()
    }

    /// Continues from `state` (written by [`DataLoader::state`] of a loader with the same
    /// dataset and data-parallel layout): the next batches equal those an uninterrupted loader
    /// would have produced. Read-ahead batches are discarded.
    pub fn load_state(&mut self, state: &LoaderState) -> Result<()> {
        state.check_compatible(
            &self.plan.dataset,
            self.plan.dp_rank,
            self.plan.dp_world_size,
        )?;
        if let PlanInput::Text { shard, .. } = &self.plan.input {
            let records = shard.end - shard.start;
            if state.sample_idx > records {
                return Err(Error::StateMismatch {
                    key: "records in this rank's block",
                    saved: format!("at least {}", state.sample_idx),
                    current: records.to_string(),
                });
            }
        }
        // Stops and joins the prefetch thread, if any.
        self.run = Run::Idle;
        self.state = state.clone();
        Ok(())
    }

    /// Total time `next_batch` has spent waiting for data.
    pub fn wait_time(&self) -> Duration {
        self.wait_total
    }

    /// Time the last `next_batch` call spent waiting for data.
    pub fn last_wait(&self) -> Duration {
        self.last_wait
    }

    /// The dataset name (lowercase).
    pub fn dataset(&self) -> &str {
        &self.plan.dataset
    }
}

#[cfg(test)]
mod tests {
    use super::DataLoader;

    #[test]
    fn loader_can_move_to_another_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<DataLoader>();
    }
}
