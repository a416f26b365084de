//! Run-level sections: `[job]`, `[debug]` and `[experimental]`.

use crate::declare::section;

section! {
    /// Job level configuration: where outputs go and how the configuration itself is shown.
    pub struct Job {
        /// File to read job configs from (also `--config PATH` in Titan).
        ///
        /// Only meaningful on the command line: it selects the TOML file layered between the
        /// defaults and the command-line overrides.
        pub config_file: Option<String> = None,
        /// Folder to dump job outputs (checkpoints, metrics, the saved config).
        pub dump_folder: String = String::from("./outputs"),
        /// Description of the job.
        pub description: String = String::from("default job"),
        /// Print the merged job config to the terminal (as TOML in Titan) before training.
        pub print_config: bool = false,
        /// Path, under `job.dump_folder`, to save the merged job config into.
        ///
        /// Titan writes TOML, or JSON when the name ends in `.json` (torchtitan's format); when
        /// unset Titan saves `<dump_folder>/config.toml`.
        pub save_config_file: Option<String> = None,
        /// Python module extending `JobConfig` with custom sections (torchtitan only).
        pub custom_config_module: String = String::new(),
    }
}

section! {
    /// Debugging and reproducibility.
    pub struct Debug {
        /// Base RNG seed used for training; unset picks one at random.
        pub seed: Option<u64> = None,
        /// Use deterministic algorithms wherever possible, may be slower.
        pub deterministic: bool = false,
        /// Only warn about ops without deterministic implementations rather than erroring out.
        pub deterministic_warn_only: bool = false,
        /// Force each expert to get the same number of tokens via round-robin (MoE debugging).
        pub moe_force_load_balance: bool = false,
    }
}

section! {
    /// Experimental extension points.
    pub struct Experimental {
        /// Dotted Python module to import before training, e.g. to register a model.
        pub custom_import: String = String::new(),
        /// DEPRECATED alias of `job.custom_config_module`.
        pub custom_args_module: String = String::new(),
    }
}
