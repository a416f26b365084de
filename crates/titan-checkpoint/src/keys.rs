//! Top-level keys of a checkpoint, as torchtitan names them, and the namespaced names built
//! from them. `exclude_from_loading` matches the part of a name before its first `.`.

/// Model parameters: `model.<fqn>` (torchtitan FQN, e.g. `model.layers.0.attention.wq.weight`).
pub const MODEL: &str = "model";
/// Optimizer state tensors: `optimizer.<fqn>.<state>` (e.g. `optimizer.norm.weight.exp_avg`),
/// and optimizer blobs (`optimizer`).
pub const OPTIMIZER: &str = "optimizer";
/// LR scheduler state blob.
pub const LR_SCHEDULER: &str = "lr_scheduler";
/// Data loader state blobs, one per data-parallel rank: `dataloader.rank<r>`.
pub const DATALOADER: &str = "dataloader";
/// Step, tokens seen, RNG state.
pub const TRAIN_STATE: &str = "train_state";

/// The keys `exclude_from_loading` accepts even when a checkpoint lacks them.
pub const KNOWN: [&str; 5] = [MODEL, OPTIMIZER, LR_SCHEDULER, DATALOADER, TRAIN_STATE];

/// The top-level key of a namespaced name (`optimizer` for `optimizer.norm.weight.exp_avg`).
pub fn top_level(name: &str) -> &str {
    name.split('.').next().unwrap_or(name)
}

/// `model.<fqn>`.
pub fn model(fqn: &str) -> String {
    format!("{MODEL}.{fqn}")
}

/// The FQN of a `model.<fqn>` name.
pub fn model_fqn(name: &str) -> Option<&str> {
    name.strip_prefix(MODEL)?.strip_prefix('.')
}

/// `optimizer.<fqn>.<state>`.
pub fn optimizer(fqn: &str, state: &str) -> String {
    format!("{OPTIMIZER}.{fqn}.{state}")
}

/// `dataloader.rank<dp_rank>`.
pub fn dataloader(dp_rank: usize) -> String {
    format!("{DATALOADER}.rank{dp_rank}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_keys() {
        assert_eq!(top_level(&optimizer("norm.weight", "exp_avg")), OPTIMIZER);
        assert_eq!(top_level(&dataloader(3)), DATALOADER);
        assert_eq!(top_level(TRAIN_STATE), TRAIN_STATE);
        assert_eq!(
            model_fqn(&model("layers.0.attention.wq.weight")),
            Some("layers.0.attention.wq.weight")
        );
        assert_eq!(model_fqn("modelx.w"), None);
    }
}
