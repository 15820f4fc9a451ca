//! Typed errors of the compression crate.

use std::path::PathBuf;

use smelt_formats::{GgmlType, GgufError, QuantError};

#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("tensor {tensor:?}: {source}")]
    Quant { tensor: String, source: QuantError },
    #[error("tensor {tensor:?} is {ty}, which smelt cannot read back to re-quantize; keep it with --keep '{tensor}'")]
    Unreadable { tensor: String, ty: GgmlType },
    #[error("tensor {tensor:?} holds NaN or infinite values: the input file is corrupt")]
    NonFinite { tensor: String },
    #[error("the calibration text has {tokens} tokens, fewer than one chunk of {ctx}: give a longer text or a smaller --ctx")]
    CalibrationTooShort { tokens: usize, ctx: usize },
    #[error(transparent)]
    Model(#[from] smelt_models::ModelError),
    #[error(transparent)]
    Imatrix(#[from] crate::imatrix::ImatrixError),
    #[error("tensor {tensor:?}: {source}")]
    Gptq { tensor: String, source: crate::gptq::GptqError },
    #[error(transparent)]
    Eval(#[from] smelt_eval::EvalError),
    #[error("tensor {tensor:?}: {source}")]
    Prune { tensor: String, source: crate::prune::PruneError },
    #[error("{0}")]
    Fit(String),
    #[error("the budget is below the smallest file the candidate types give ({smallest} bytes, {smallest_bpw:.2} bits per weight): allow more, or add smaller types to --types")]
    BudgetTooSmall { smallest: u64, smallest_bpw: f64 },
    #[error("the output {0} is the input file; write to another path")]
    OutputIsInput(PathBuf),
    /// Writing an output directory failed (nothing was left half-written).
    #[error("{0}")]
    Output(String),
    /// Teacher, student and data that cannot be distilled together.
    #[error("{0}")]
    Distill(String),
    /// Fine-tuning data or settings that cannot be used.
    #[error("{0}")]
    Finetune(String),
    #[error(transparent)]
    Train(#[from] smelt_train::TrainError),
}
