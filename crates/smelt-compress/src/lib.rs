//! smelt-compress: making models smaller, as recipes over the model files.
//!
//! - [`plan`]: which type every tensor of a GGUF file becomes (targets per role, `--keep`
//!   globs, the one fallback rule for rows that do not divide into blocks).
//! - [`convert`]: one tensor re-quantized, rows split across threads, with its error.
//! - [`pipeline`]: a whole file planned, converted and written atomically, with statistics
//!   per type.
//! - [`calib`]: statistics of the weight matrices' inputs over a calibration text (importance
//!   vectors, GPTQ Hessians), gathered by an observer of the forward pass.
//! - [`imatrix`]: importance matrices in llama.cpp's files (GGUF and legacy `.dat`).
//! - [`fit`]: mixed precision to a budget (a type per tensor from measured sensitivities).
//! - [`awq`]: AWQ-style per-channel scales searched on the calibration text and folded into
//!   the norms and matrices before the scaled ones, so the file stays a plain Llama GGUF.
//! - [`prune`]: unstructured and N:M pruning (magnitude, Wanda, SparseGPT) of weight matrices.
//! - [`finetune`]: LoRA fine-tuning of a decoder over its frozen (quantized) weights, on text
//!   or chat data (answers only).
//! - [`merge`]: a LoRA adapter merged into its base GGUF.
//! - [`qat`]: quantization-aware training (fake-quantized weights, straight-through estimator,
//!   self-distillation from the original) into any registry type.
//! - [`qat_encoder`]: the same for a sentence encoder's int8 path (weights per channel after
//!   SmoothQuant, inputs per row), distilled from the f32 encoder's sentence vectors.
//! - [`classify_tune`]: a sentence encoder's last layers fine-tuned with its classification head.
//! - [`contrastive`]: a sentence encoder fine-tuned on pairs with in-batch negatives
//!   (MultipleNegativesRankingLoss).
//! - [`gptq`]: GPTQ (column-by-column quantization with error feedback through the inverse
//!   Hessian) into ggml block types.
//!
//! The command line parses arguments into a [`QuantizeConfig`] and prints what comes back; the
//! logic lives here.

pub mod awq;
pub mod calib;
pub mod classify_tune;
pub mod contrastive;
pub mod convert;
pub mod distill;
pub mod encoder_dir;
pub mod error;
pub mod finetune;
pub mod fit;
pub mod gptq;
pub mod imatrix;
pub mod merge;
pub mod pipeline;
pub mod plan;
pub mod prune;
pub mod qat;
pub mod qat_encoder;

pub use convert::{convert, round_trip, Converted};
pub use error::CompressError;
pub use pipeline::{quantize_file, Calib, ErrStat, Summary};
pub use plan::{glob, plan, QuantizeConfig, TensorPlan};
