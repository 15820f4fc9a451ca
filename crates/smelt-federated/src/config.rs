//! The settings a server sends with each instruction (`FitIns.config`, `EvaluateIns.config`),
//! read into typed values.
//!
//! Keys this client knows (others are reported back so that the caller can log them once):
//! - `local_epochs` or `epochs` (integer, 1..=1000): passes over the local data per fit;
//! - `batch_size` (integer, 1..=1,000,000);
//! - `lr` or `learning_rate` (number, > 0 and <= 100): the step size (default: the task's safe
//!   step);
//! - `proximal_mu` (number, >= 0): FedProx's proximal weight, sent by Flower's `FedProx`;
//! - `server_round` or `round` (integer): only for the logs.
//!
//! Integers may come as `uint64`, `sint64` or a whole `double`; a value of another type is an
//! error that names the key, the expected type and what arrived.

use std::collections::HashMap;

use crate::proto::{scalar, Scalar};
use crate::FedError;

/// One fit's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct FitConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: Option<f64>,
    pub proximal_mu: f64,
    pub round: Option<u64>,
}

impl Default for FitConfig {
    fn default() -> Self {
        FitConfig { epochs: 1, batch_size: 32, lr: None, proximal_mu: 0.0, round: None }
    }
}

/// A readable form of a scalar for messages.
fn show(v: &Scalar) -> String {
    match &v.scalar {
        Some(scalar::Scalar::Double(x)) => format!("the number {x}"),
        Some(scalar::Scalar::Uint64(x)) => format!("the integer {x}"),
        Some(scalar::Scalar::Sint64(x)) => format!("the integer {x}"),
        Some(scalar::Scalar::Bool(x)) => format!("the boolean {x}"),
        Some(scalar::Scalar::String(x)) => format!("the string {x:?}"),
        Some(scalar::Scalar::Bytes(x)) => format!("{} bytes", x.len()),
        None => "an empty value".into(),
    }
}

fn integer(key: &str, v: &Scalar, range: std::ops::RangeInclusive<u64>) -> Result<u64, FedError> {
    let n = match &v.scalar {
        Some(scalar::Scalar::Uint64(x)) => Some(*x),
        Some(scalar::Scalar::Sint64(x)) => u64::try_from(*x).ok(),
        Some(scalar::Scalar::Double(x)) if x.fract() == 0.0 && *x >= 0.0 && *x < 1e18 => Some(*x as u64),
        _ => None,
    };
    n.filter(|n| range.contains(n)).ok_or_else(|| FedError::Config { key: key.into(), expected: format!("an integer in {}..={}", range.start(), range.end()), got: show(v) })
}

fn number(key: &str, v: &Scalar, ok: impl Fn(f64) -> bool, expected: &str) -> Result<f64, FedError> {
    let x = match &v.scalar {
        Some(scalar::Scalar::Double(x)) => Some(*x),
        Some(scalar::Scalar::Uint64(x)) => Some(*x as f64),
        Some(scalar::Scalar::Sint64(x)) => Some(*x as f64),
        _ => None,
    };
    x.filter(|&x| x.is_finite() && ok(x)).ok_or_else(|| FedError::Config { key: key.into(), expected: expected.into(), got: show(v) })
}

impl FitConfig {
    /// Reads a fit config; returns it with the keys it did not know (sorted).
    pub fn parse(config: &HashMap<String, Scalar>) -> Result<(FitConfig, Vec<String>), FedError> {
        let mut c = FitConfig::default();
        let mut unknown = Vec::new();
        for (key, v) in config {
            match key.as_str() {
                "local_epochs" | "epochs" => c.epochs = integer(key, v, 1..=1000)? as usize,
                "batch_size" => c.batch_size = integer(key, v, 1..=1_000_000)? as usize,
                "lr" | "learning_rate" => c.lr = Some(number(key, v, |x| x > 0.0 && x <= 100.0, "a number in (0, 100]")?),
                "proximal_mu" => c.proximal_mu = number(key, v, |x| x >= 0.0, "a number >= 0")?,
                "server_round" | "round" => c.round = Some(integer(key, v, 0..=u64::MAX)?),
                _ => unknown.push(key.clone()),
            }
        }
        unknown.sort();
        Ok((c, unknown))
    }
}

/// The round an evaluate instruction names, if any (other keys are ignored: evaluation has no
/// settings here).
pub fn round_of(config: &HashMap<String, Scalar>) -> Option<u64> {
    ["server_round", "round"].iter().find_map(|k| config.get(*k)).and_then(|v| integer("server_round", v, 0..=u64::MAX).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: scalar::Scalar) -> Scalar {
        Scalar { scalar: Some(v) }
    }

    #[test]
    fn known_keys_are_typed_and_unknown_ones_reported() {
        let cfg: HashMap<String, Scalar> = [
            ("local_epochs".to_string(), s(scalar::Scalar::Sint64(3))),
            ("batch_size".to_string(), s(scalar::Scalar::Double(16.0))),
            ("proximal_mu".to_string(), s(scalar::Scalar::Double(0.1))),
            ("colour".to_string(), s(scalar::Scalar::String("red".into()))),
        ]
        .into();
        let (c, unknown) = FitConfig::parse(&cfg).unwrap();
        assert_eq!(c, FitConfig { epochs: 3, batch_size: 16, lr: None, proximal_mu: 0.1, round: None });
        assert_eq!(unknown, ["colour"]);
    }

    #[test]
    fn wrong_types_and_ranges_are_errors_that_name_the_key() {
        for (k, v) in [
            ("local_epochs", scalar::Scalar::String("3".into())),
            ("local_epochs", scalar::Scalar::Sint64(-1)),
            ("local_epochs", scalar::Scalar::Double(2.5)),
            ("batch_size", scalar::Scalar::Uint64(0)),
            ("lr", scalar::Scalar::Double(f64::NAN)),
            ("proximal_mu", scalar::Scalar::Double(-0.5)),
            ("lr", scalar::Scalar::Bool(true)),
        ] {
            let cfg: HashMap<String, Scalar> = [(k.to_string(), s(v))].into();
            let e = FitConfig::parse(&cfg).unwrap_err().to_string();
            assert!(e.contains(k), "{e}");
        }
    }
}
