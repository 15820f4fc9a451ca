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
    #[error("the output {0} is the input file; write to another path")]
    OutputIsInput(PathBuf),
}
