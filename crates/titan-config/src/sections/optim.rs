//! `[optimizer]` and `[lr_scheduler]`.

use crate::declare::{choice, section};

choice! {
    /// Optimizer algorithm.
    pub enum OptimizerName {
        /// Adam with decoupled weight decay.
        AdamW = "AdamW",
        /// Adam with L2 weight decay folded into the gradient.
        Adam = "Adam",
    }
}

choice! {
    /// How the optimizer step is implemented (torchtitan picks a PyTorch kernel family;
    /// the numerics are the same).
    pub enum OptimizerImplementation {
        /// One parameter at a time.
        ForLoop = "for-loop",
        /// Horizontally fused over parameters.
        Foreach = "foreach",
        /// One fused kernel.
        Fused = "fused",
    }
}

choice! {
    /// Shape of the learning-rate decay after warmup (and the stable phase).
    pub enum DecayType {
        /// Linear from 1 to `min_lr_factor`.
        Linear = "linear",
        /// `1 - sqrt(progress)`.
        Sqrt = "sqrt",
        /// Half a cosine period.
        Cosine = "cosine",
    }
}

section! {
    /// Optimizer and its hyperparameters.
    pub struct Optimizer {
        /// Optimizer to use.
        pub name: OptimizerName = OptimizerName::AdamW,
        /// Learning rate (peak, after warmup).
        pub lr: f64 = 8e-4,
        /// Adam first-moment decay.
        pub beta1: f64 = 0.9,
        /// Adam second-moment decay.
        pub beta2: f64 = 0.95,
        /// Adam epsilon.
        pub eps: f64 = 1e-8,
        /// Weight decay, applied to all parameters.
        pub weight_decay: f64 = 0.1,
        /// Optimizer implementation: `for-loop`, `foreach` or `fused`.
        pub implementation: OptimizerImplementation = OptimizerImplementation::Fused,
        /// Step each parameter's optimizer inside the backward pass (incompatible with gradient clipping).
        pub early_step_in_backward: bool = false,
    }
}

section! {
    /// Learning-rate schedule: linear warmup, optional stable phase, then decay.
    pub struct LrScheduler {
        /// Steps of linear warmup, normally 1/5 of `training.steps`.
        pub warmup_steps: usize = 200,
        /// Total steps of the schedule; unset uses `training.steps`.
        pub total_steps: Option<usize> = None,
        /// Fraction of the steps spent decaying (warmup-stable-decay); unset decays right after warmup.
        pub decay_ratio: Option<f64> = None,
        /// Decay shape: `linear`, `sqrt` or `cosine`.
        pub decay_type: DecayType = DecayType::Linear,
        /// The learning rate never drops below `optimizer.lr * min_lr_factor`.
        pub min_lr_factor: f64 = 0.0,
    }
}
