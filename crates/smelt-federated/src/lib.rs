//! Federated learning with a Flower server: smelt as a Flower client.
//!
//! - [`client`]: joins a server's `FlowerService/Join` stream and answers its instructions;
//! - [`trainable`]: the interface of what a federation trains; [`head`] is the classification
//!   head on frozen embeddings; [`tuned`] the encoder's last layers and LoRA adapters;
//! - [`config`]: the server's fit settings, typed; [`npy`]: the tensors' wire format;
//! - [`privacy`]: update clipping and noise, and the Rényi-DP accountant.
//! - [`simulate`]: a real Flower server and N clients on loopback, against centralized and
//!   local-only training.

pub mod client;
pub mod config;
mod error;
pub mod head;
pub mod npy;
pub mod privacy;
pub mod simulate;
pub mod trainable;
pub mod tuned;

pub use error::FedError;

/// The Flower messages and the `FlowerService` client, generated from
/// `proto/flower_transport.proto` by tonic-prost-build (`scripts/gen-proto`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    include!("proto/flwr.proto.rs");
}
