//! The federated client's errors.

/// What can go wrong joining a federation or answering its server.
#[derive(Debug, thiserror::Error)]
pub enum FedError {
    #[error("NPY tensor: {0}")]
    Npy(String),
    #[error("fit config key {key:?}: expected {expected}, got {got}")]
    Config { key: String, expected: String, got: String },
    #[error("the server's parameters were refused: {0}")]
    Parameters(String),
    #[error("local data: {0}")]
    Data(String),
    #[error("cannot reach the Flower server at {server}: {why} ({hint})")]
    Unreachable { server: String, why: String, hint: &'static str },
    #[error("the connection to the Flower server failed: {0}")]
    Stream(String),
    #[error("{0}")]
    Settings(String),
    #[error("writing {path}: {source}")]
    Io { path: String, source: std::io::Error },
}
