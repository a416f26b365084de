//! `[parallelism]`, `[comm]` and `[fault_tolerance]`: how ranks are arranged and talk.

use crate::declare::{choice, section};

choice! {
    /// When FSDP frees gathered parameters after forward.
    pub enum ReshardAfterForward {
        /// Reshard unless pipeline parallel is on.
        Default = "default",
        /// Always reshard after forward (less memory, more communication).
        Always = "always",
        /// Never reshard after forward.
        Never = "never",
    }
}

choice! {
    /// Context-parallel load balancer.
    pub enum CpLoadBalancer {
        /// Head-tail chunks (for causal masks).
        HeadTail = "headtail",
        /// Per-token round-robin (for FlexAttention masks).
        Ptrr = "ptrr",
        /// No load balancing (torchtitan's `None`; TOML has no null).
        Off = "none" | "None",
    }
}

choice! {
    /// Collective that exchanges KV shards in context-parallel attention.
    pub enum CpRotateMethod {
        /// All-gather KV shards after the first local block.
        AllGather = "allgather",
        /// Rotate KV shards with all-to-all.
        AllToAll = "alltoall",
    }
}

choice! {
    /// Expert-parallel communication backend.
    pub enum EpCommBackend {
        /// All-to-all collectives.
        Standard = "standard",
        /// DeepEP kernels.
        DeepEp = "deepep",
    }
}

choice! {
    /// Communication mode.
    pub enum CommMode {
        /// Real collectives.
        Default = "default",
        /// Fake backend, for configuration dry runs.
        FakeBackend = "fake_backend",
        /// All ranks simulated in one process.
        LocalTensor = "local_tensor",
    }
}

choice! {
    /// Process group used by fault tolerance.
    pub enum FtProcessGroup {
        /// Gloo.
        Gloo = "gloo",
        /// NCCL.
        Nccl = "nccl",
    }
}

choice! {
    /// Semi-synchronous training algorithm under fault tolerance.
    pub enum SemiSyncMethod {
        /// Local SGD.
        LocalSgd = "local_sgd",
        /// DiLoCo.
        Diloco = "diloco",
    }
}

section! {
    /// Parallelism degrees and their options. The degrees multiply to the world size.
    pub struct Parallelism {
        /// Data-parallel replicas (DDP, or HSDP with sharding); 1 means disabled.
        pub data_parallel_replicate_degree: usize = 1,
        /// Data-parallel shards (FSDP); -1 uses the ranks left after the other degrees.
        pub data_parallel_shard_degree: i64 = -1,
        /// FSDP reshard-after-forward policy: `default`, `always` or `never`.
        pub fsdp_reshard_after_forward: ReshardAfterForward = ReshardAfterForward::Default,
        /// Tensor-parallel degree; 1 means disabled.
        pub tensor_parallel_degree: usize = 1,
        /// Do not use loss parallel when tensor parallel is on.
        pub disable_loss_parallel: bool = false,
        /// Overlap tensor-parallel communication with compute (needs compile).
        pub enable_async_tensor_parallel: bool = false,
        /// Pipeline-parallel degree (physical ranks, not stages); 1 means disabled.
        pub pipeline_parallel_degree: usize = 1,
        /// Explicit module FQNs of each pipeline model chunk, e.g. `[["tok_embeddings", "layers.0"], ["layers.1"]]`.
        pub module_fqns_per_model_part: Option<Vec<Vec<String>>> = None,
        /// Layers fewer in the first pipeline stage (it also holds the embedding).
        pub pipeline_parallel_first_stage_less_layers: usize = 1,
        /// Layers fewer in the last pipeline stage (it also holds the output layer).
        pub pipeline_parallel_last_stage_less_layers: usize = 1,
        /// Layers per (virtual) pipeline stage; unset infers it from the schedule.
        pub pipeline_parallel_layers_per_stage: Option<usize> = None,
        /// Pipeline schedule, e.g. `1F1B`, `GPipe`, `Interleaved1F1B`, `ZBVZeroBubble`.
        pub pipeline_parallel_schedule: String = String::from("1F1B"),
        /// Path to a CSV file defining a custom pipeline schedule; empty means none.
        pub pipeline_parallel_schedule_csv: String = String::new(),
        /// Size of each pipeline microbatch; `local_batch_size` must be a multiple of it.
        pub pipeline_parallel_microbatch_size: usize = 1,
        /// Overlap expert-parallel and pipeline communication (DualPipeV schedule only).
        pub pipeline_parallel_expert_parallel_overlap: bool = true,
        /// Context-parallel degree; 1 means disabled.
        pub context_parallel_degree: usize = 1,
        /// Context-parallel load balancer: `headtail`, `ptrr` or `none`.
        pub context_parallel_load_balancer: CpLoadBalancer = CpLoadBalancer::HeadTail,
        /// Context-parallel KV exchange: `allgather` or `alltoall`.
        pub context_parallel_rotate_method: CpRotateMethod = CpRotateMethod::AllGather,
        /// Expert-parallel degree (MoE only); 1 means disabled.
        pub expert_parallel_degree: usize = 1,
        /// Expert tensor-parallel degree: 1 or equal to `tensor_parallel_degree`.
        pub expert_tensor_parallel_degree: usize = 1,
        /// Expert-parallel communication backend: `standard` or `deepep`.
        pub expert_parallel_comm_backend: EpCommBackend = EpCommBackend::Standard,
    }
}

impl Parallelism {
    /// `data_parallel_shard_degree` with torchtitan's -1 decoded: `None` means "use the ranks
    /// left over by the other degrees".
    pub fn dp_shard(&self) -> Option<usize> {
        usize::try_from(self.data_parallel_shard_degree).ok()
    }
}

section! {
    /// Collective communication.
    pub struct Comm {
        /// Timeout for collectives during initialization and the first train step, in seconds.
        pub init_timeout_seconds: u64 = 300,
        /// Timeout for collectives after the first train step, in seconds.
        pub train_timeout_seconds: u64 = 100,
        /// Flight-recorder ring buffer size; 0 disables recording.
        pub trace_buf_size: usize = 20000,
        /// Flight-recorder trace files location, under `job.dump_folder`.
        pub save_traces_folder: String = String::from("comm_traces"),
        /// Flight-recorder trace files prefix.
        pub save_traces_file_prefix: String = String::from("rank_"),
        /// Communication mode: `default`, `fake_backend` (dry run) or `local_tensor` (simulated ranks).
        pub mode: CommMode = CommMode::Default,
    }
}

section! {
    /// Fault tolerance (TorchFT): replica groups that can fail and rejoin.
    pub struct FaultTolerance {
        /// Enable fault tolerance.
        pub enable: bool = false,
        /// Process group for fault tolerance: `gloo` or `nccl`.
        pub process_group: FtProcessGroup = FtProcessGroup::Gloo,
        /// Abort process-group operations that take longer than this, in milliseconds.
        pub process_group_timeout_ms: u64 = 10000,
        /// Replica id of this run.
        pub replica_id: usize = 0,
        /// Number of replica groups.
        pub group_size: usize = 0,
        /// Minimum number of replicas for each step.
        pub min_replica_size: usize = 1,
        /// Semi-synchronous training algorithm: `local_sgd` or `diloco`; unset means fully synchronous.
        pub semi_sync_method: Option<SemiSyncMethod> = None,
    }
}
