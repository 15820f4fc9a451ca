//! smelt-eval: the measuring stick for every model smelt makes.
//!
//! - [`lm`]: perplexity as llama-perplexity scores it, and against a reference model the KL
//!   divergence distribution, top-1 agreement and the change of the correct token's
//!   probability, computed online; [`kld_base`] writes llama-perplexity's logits file;
//! - [`encoder`]: cosine fidelity, STS Spearman, retrieval overlap, classification with the head
//!   kept fixed and refit;
//! - [`efficiency`]: latency percentiles, time to first token, throughput, and [`energy`]
//!   (RAPL when readable, else a labelled estimate from CPU time) with carbon;
//! - [`record`]: one record of all of it, and [`report`]: table, JSON, CSV, Markdown, HTML with
//!   plots from that record.

pub mod efficiency;
pub mod encoder;
pub mod energy;
mod error;
pub mod kld_base;
pub mod lm;
pub mod record;
pub mod report;
pub mod stats;

pub use error::EvalError;
pub use record::{ModelResult, Record};
