//! Pretrain Llama 3 with Titan as a library.
//!
//! ```sh
//! cargo run -p llama3_pretrain --release -- --training.steps 20
//! cargo run -p llama3_pretrain --release -- --config configs/llama3_debugmodel.toml
//! ```
//!
//! The built-in `llama3` spec is extended with one dataset of your own, registered by name, so
//! `--training.dataset my_notes --training.dataset_path notes/` trains on a folder of `.txt`
//! files, next to every built-in dataset.

use titan_data::DatasetRegistry;
use titan_trainer::{llama::llama3_spec, Registry};

fn main() {
    let spec = llama3_spec().with_datasets(|| {
        let mut datasets = DatasetRegistry::with_builtins();
        datasets.register_documents(
            "hello_world",
            (0..1000)
                .map(|i| format!("Document {i}: hello, world. Titan trains on this text."))
                .collect(),
        );
        datasets
    });
    let mut registry = Registry::empty();
    registry.register(spec);
    std::process::exit(titan_trainer::run_main(
        &registry,
        std::env::args().skip(1).collect(),
    ));
}
