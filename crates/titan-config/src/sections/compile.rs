//! `[compile]` and `[quantize.*]`: torch.compile and low-precision training options.

use crate::declare::{choice, section};

choice! {
    /// Float8 scaling recipe.
    pub enum Float8Recipe {
        /// One scale per tensor.
        Tensorwise = "tensorwise",
        /// One scale per row.
        Rowwise = "rowwise",
        /// Rowwise, with the weight-gradient GEMM in high precision.
        RowwiseWithGwHp = "rowwise_with_gw_hp",
    }
}

choice! {
    /// Kernel used for the MXFP8 dim-1 cast.
    pub enum MxCastKernel {
        /// Triton kernel.
        Triton = "triton",
        /// CUDA kernel.
        Cuda = "cuda",
        /// Plain torch ops.
        Torch = "torch",
    }
}

choice! {
    /// MX recipe for grouped GEMMs.
    pub enum MxGroupedRecipe {
        /// MXFP8.
        Mxfp8 = "mxfp8",
    }
}

section! {
    /// torch.compile.
    pub struct Compile {
        /// Whether to apply torch.compile.
        pub enable: bool = false,
        /// Which components to compile: `model`, `loss`.
        pub components: Vec<String> = vec![String::from("model"), String::from("loss")],
        /// torch.compile backend.
        pub backend: String = String::from("inductor"),
    }
}

section! {
    /// Float8 training of Linear layers (converter `quantize.linear.float8`).
    pub struct Float8Linear {
        /// All-gather float8 weights in FSDP (recommended with tensorwise scaling).
        pub enable_fsdp_float8_all_gather: bool = false,
        /// Precompute float8 scales for FSDP in one all-reduce after the optimizer step.
        pub precompute_float8_dynamic_scale_for_fsdp: bool = false,
        /// Float8 recipe: `tensorwise`, `rowwise` or `rowwise_with_gw_hp`; unset means tensorwise.
        pub recipe_name: Option<Float8Recipe> = None,
        /// Comma-separated FQNs of modules not to convert, e.g. `output`.
        pub filter_fqns: Vec<String> = Vec::new(),
        /// Emulate float8 GEMMs in high precision (testing only).
        pub emulate: bool = false,
    }
}

section! {
    /// MXFP8 training of Linear layers (converter `quantize.linear.mx`).
    pub struct MxLinear {
        /// Kernel for the dim-1 cast: `triton`, `cuda` or `torch`.
        pub mxfp8_dim1_cast_kernel_choice: MxCastKernel = MxCastKernel::Triton,
        /// MX recipe name, e.g. `mxfp8_cublas`.
        pub recipe_name: String = String::from("mxfp8_cublas"),
        /// Comma-separated FQNs of modules not to convert.
        pub filter_fqns: Vec<String> = vec![String::from("output")],
    }
}

section! {
    /// Float8 grouped GEMMs of MoE experts (converter `quantize.grouped_mm.float8`).
    pub struct Float8GroupedMm {
        /// Comma-separated FQNs of MoE layers to quantize, e.g. `experts`.
        pub fqns: Vec<String> = Vec::new(),
    }
}

section! {
    /// MXFP8 grouped GEMMs of MoE experts (converter `quantize.grouped_mm.mx`).
    pub struct MxGroupedMm {
        /// Recipe for grouped GEMMs: `mxfp8`.
        pub recipe_name: MxGroupedRecipe = MxGroupedRecipe::Mxfp8,
        /// Comma-separated FQNs of MoE modules to quantize, e.g. `experts`.
        pub fqns: Vec<String> = Vec::new(),
    }
}

section! {
    /// Quantized training of Linear layers.
    pub struct QuantizedLinear {
    }
    subsections {
        pub float8: Float8Linear,
        pub mx: MxLinear,
    }
}

section! {
    /// Quantized training of grouped GEMMs.
    pub struct QuantizedGroupedMm {
    }
    subsections {
        pub float8: Float8GroupedMm,
        pub mx: MxGroupedMm,
    }
}

section! {
    /// Quantized (low-precision) training.
    pub struct Quantize {
    }
    subsections {
        pub linear: QuantizedLinear,
        pub grouped_mm: QuantizedGroupedMm,
    }
}
