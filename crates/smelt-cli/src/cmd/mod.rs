//! One module per subcommand.

pub mod bench;
pub mod bench_encoder;
pub mod chat;
pub mod classify;
pub mod distill;
pub mod distill_decoder;
pub mod embed;
pub mod eval;
pub mod eval_quality;
pub mod finetune;
pub mod finetune_pairs;
pub mod federated;
pub mod federated_client;
pub mod fit;
pub mod imatrix;
pub mod inspect;
pub mod lm;
pub mod merge;
pub mod prune;
pub mod prune_encoder;
pub mod pull;
pub mod qat;
pub mod qat_encoder;
pub mod quantize;
pub mod run;
pub mod route;
pub mod serve;
pub mod shrink;

/// A text file that must be UTF-8 (calibration texts), with the first bad byte's offset in the
/// error.
pub fn read_utf8(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    String::from_utf8(bytes).map_err(|e| anyhow::anyhow!("{} is not valid UTF-8 (first bad byte at offset {})", path.display(), e.utf8_error().valid_up_to()))
}
