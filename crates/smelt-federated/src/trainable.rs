//! What a federated client trains: any set of parameter tensors with a local fit and a local
//! evaluation. The classification head is the first ([`crate::head::HeadTask`]); encoder layers
//! or LoRA adapters plug in the same way.
//!
//! The client owns everything around it: it checks the server's tensors against
//! [`Trainable::shapes`] before [`Trainable::set`], applies update clipping and noise after
//! [`Trainable::fit`], and counts bytes.

use crate::config::FitConfig;
use crate::npy::Tensor;
use crate::FedError;

/// The result of a local fit or evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// Examples it used (the weight FedAvg gives this client).
    pub num_examples: usize,
    /// Mean loss over those examples.
    pub loss: f64,
    /// Named values reported to the server (`accuracy` among them).
    pub metrics: Vec<(String, f64)>,
}

/// A model part that a federation trains.
pub trait Trainable: Send {
    /// What it is, for logs (e.g. `classify head 5 x 384`).
    fn describe(&self) -> String;
    /// The parameter tensors' shapes, in the order they travel.
    fn shapes(&self) -> Vec<Vec<usize>>;
    /// The current parameters, in that order.
    fn get(&self) -> Vec<Tensor>;
    /// Replaces the parameters (the caller has checked shapes and values).
    fn set(&mut self, params: &[Tensor]);
    /// Trains on the local data from the current parameters; `seed` fixes the example order.
    /// With `cfg.proximal_mu > 0` the objective gains FedProx's `(mu/2) |w - w_start|^2`.
    fn fit(&mut self, cfg: &FitConfig, seed: u64) -> Result<Outcome, FedError>;
    /// The example-level (epsilon at `delta`) its local training has spent so far, when it
    /// trains privately.
    fn epsilon(&self, _delta: f64) -> Option<f64> {
        None
    }
    /// Loss and metrics of the current parameters on the local evaluation data.
    fn evaluate(&self) -> Result<Outcome, FedError>;
}
