//! One module per subcommand.

pub mod bench;
pub mod bench_encoder;
pub mod chat;
pub mod classify;
pub mod embed;
pub mod eval;
pub mod eval_quality;
pub mod imatrix;
pub mod inspect;
pub mod lm;
pub mod pull;
pub mod quantize;
pub mod run;
pub mod shrink;
