//! Checkpoints: the parameters, AdamW's moments, the best parameters so far (when evaluating)
//! and the loop's state, in one safetensors file (`params`, `adam.m`, `adam.v`, `best`; the state
//! as JSON in the `__metadata__` entry `smelt.train`). Written to a temporary file and renamed
//! into place, so a full disk or a kill while writing leaves the previous checkpoint whole.

use std::path::Path;

use serde::{Deserialize, Serialize};
use smelt_formats::fsutil::write_atomic;
use smelt_formats::safetensors::{write_f32, SafetensorsFile};

use crate::TrainError;

/// The loop's state besides the tensors.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoopState {
    /// Optimizer steps done.
    pub step: u64,
    pub best_val: Option<f64>,
    /// Evaluations since the best one.
    pub bad_evals: u32,
    pub tokens: u64,
    pub elapsed_s: f64,
    /// What must not change on `--resume` (parameter count, seed, batch, accumulation, steps,
    /// learning rate, examples), as text.
    pub fingerprint: String,
}

/// Everything a run needs to continue exactly.
#[derive(Clone, Debug, Default)]
pub struct Checkpoint {
    pub state: LoopState,
    pub params: Vec<f32>,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub adam_t: u64,
    pub best: Option<Vec<f32>>,
}

const KEY: &str = "smelt.train";

/// A checkpoint's parts borrowed from a running loop: saved without copying them (a copy of the
/// parameters and AdamW's two moments is three times the model).
#[derive(Clone, Copy, Debug)]
pub struct CheckpointView<'a> {
    pub state: &'a LoopState,
    pub params: &'a [f32],
    pub m: &'a [f32],
    pub v: &'a [f32],
    pub adam_t: u64,
    pub best: Option<&'a [f32]>,
}

impl CheckpointView<'_> {
    /// Writes the checkpoint to `path` atomically, streaming the tensors.
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        let n = [self.params.len()];
        let mut tensors: Vec<(&str, &[usize], &[f32])> = vec![("params", &n, self.params), ("adam.m", &n, self.m), ("adam.v", &n, self.v)];
        if let Some(b) = self.best {
            tensors.push(("best", &n, b));
        }
        let state = serde_json::json!({"loop": self.state, "adam_t": self.adam_t, "version": 1}).to_string();
        write_atomic(
            path,
            |w| write_f32(w, &tensors, &[(KEY.into(), state)]).map_err(|e| TrainError::Checkpoint { path: path.into(), reason: e.to_string() }),
            |p, source| TrainError::Io { path: p, source },
        )
    }
}

impl Checkpoint {
    /// Writes the checkpoint to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        CheckpointView { state: &self.state, params: &self.params, m: &self.m, v: &self.v, adam_t: self.adam_t, best: self.best.as_deref() }.save(path)
    }

    /// Reads a checkpoint written by [`Checkpoint::save`].
    pub fn load(path: &Path) -> Result<Checkpoint, TrainError> {
        let bad = |reason: String| TrainError::Checkpoint { path: path.into(), reason };
        let f = SafetensorsFile::open(path).map_err(|e| bad(e.to_string()))?;
        let meta = f.metadata.iter().find(|(k, _)| k == KEY).map(|(_, v)| v.as_str()).ok_or_else(|| bad(format!("no `{KEY}` metadata: not a smelt checkpoint")))?;
        let json: serde_json::Value = serde_json::from_str(meta).map_err(|e| bad(format!("metadata: {e}")))?;
        let state: LoopState = serde_json::from_value(json["loop"].clone()).map_err(|e| bad(format!("metadata: {e}")))?;
        let adam_t = json["adam_t"].as_u64().ok_or_else(|| bad("metadata: no adam_t".into()))?;
        let params = f.tensor_f32("params", None).map_err(|e| bad(e.to_string()))?;
        let n = params.len();
        let same = |name: &str| -> Result<Vec<f32>, TrainError> {
            let v = f.tensor_f32(name, Some(&[n])).map_err(|e| bad(e.to_string()))?;
            Ok(v)
        };
        let (m, v) = (same("adam.m")?, same("adam.v")?);
        let best = if f.get("best").is_ok() { Some(same("best")?) } else { None };
        if params.iter().chain(&m).chain(&v).any(|x| !x.is_finite()) {
            return Err(bad("holds NaN or infinite values".into()));
        }
        Ok(Checkpoint { state, params, m, v, adam_t, best })
    }
}
