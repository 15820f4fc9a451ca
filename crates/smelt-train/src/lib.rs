//! The training engine: an optimizer ([`optim::AdamW`]), a learning-rate schedule, gradient
//! clipping by global norm, and a loop ([`Trainer`]) over any [`Objective`] (a model, its data and
//! its loss) with gradient accumulation, a seeded data order, evaluation with early stopping,
//! checkpoints written atomically, `resume` that continues bit for bit, and a JSON-lines log.
//!
//! Parameters and gradients are flat f32 buffers of the same layout
//! ([`smelt_models::backward::Params`]); the model's backward accumulates into the gradient.

pub mod checkpoint;
pub mod optim;
pub mod order;
pub mod trainer;

pub use checkpoint::{Checkpoint, CheckpointView};
pub use optim::{AdamW, Schedule};
pub use trainer::{Objective, Outcome, Progress, StepStats, Stop, TrainConfig, Trainer};

use std::path::PathBuf;

/// What can stop training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The loss or a gradient became NaN or infinite (often a learning rate too high).
    #[error("the {what} became {value} at step {step}: lower the learning rate (--lr) or clip harder (--clip); {kept}")]
    NonFinite { what: &'static str, value: f64, step: u64, kept: String },
    #[error("setting {key} = {value}: {reason}")]
    Setting { key: &'static str, value: String, reason: String },
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("writing {path}: {source}")]
    Io { path: PathBuf, #[source] source: std::io::Error },
    #[error(transparent)]
    Model(#[from] smelt_models::ModelError),
    #[error(transparent)]
    Format(#[from] smelt_formats::error::SafetensorsError),
    /// An objective's own failure (bad data, a teacher that cannot run).
    #[error("{0}")]
    Objective(String),
}

impl TrainError {
    pub fn setting(key: &'static str, value: impl std::fmt::Display, reason: impl Into<String>) -> TrainError {
        TrainError::Setting { key, value: value.to_string(), reason: reason.into() }
    }
}
