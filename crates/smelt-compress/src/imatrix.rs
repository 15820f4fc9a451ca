//! Importance matrices in llama.cpp's files, so that an imatrix from either tool drives the other.
//!
//! For each weight tensor `W` (its ggml name), `sums` holds `sum_r x_rj^2` over the rows `x_r`
//! that multiplied `W` (one segment of `ne0` columns per expert matrix; one for dense models)
//! and `counts` the rows per segment. The importance of column `j` is `sums_j / count`, the mean
//! square input (llama-quantize's `quant_weights`).
//!
//! Two forms, both read and written:
//! - GGUF (llama-imatrix's default): `general.type = "imatrix"`, `imatrix.datasets` (strings),
//!   `imatrix.chunk_count`, `imatrix.chunk_size` (u32); per `W`, two F32 tensors, `W.in_sum2`
//!   `[ne0, n_mat]` and `W.counts` `[1, n_mat]`, in name order.
//! - legacy `.dat`: `i32 n_entries`, then per entry `i32 len, name, i32 ncall, i32 nval,
//!   f32 x nval` holding `(sum / count) * ncall`, then optionally `i32 chunk_count, i32 len,
//!   dataset name` (all little-endian).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use smelt_formats::gguf::{GgufArray, GgufValue, GgufWriter, TensorSpec};
use smelt_formats::{GgmlType, GgufError, GgufFile, Metadata};

use crate::calib::InputStats;

/// One weight tensor's statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct ImatrixEntry {
    /// `sum x^2` per column, `n_mat` segments of `ne0` values.
    pub sums: Vec<f32>,
    /// Rows seen per segment.
    pub counts: Vec<f32>,
}

impl ImatrixEntry {
    /// Mean square input per column (1 where a segment saw no rows, as llama.cpp does).
    pub fn importance(&self) -> Vec<f32> {
        let ne0 = self.sums.len() / self.counts.len().max(1);
        self.sums.iter().enumerate().map(|(i, &s)| match self.counts.get(i / ne0.max(1)) { Some(&c) if c > 0.0 => s / c, _ => 1.0 }).collect()
    }
}

/// An importance matrix: per weight tensor, its input statistics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Imatrix {
    pub entries: BTreeMap<String, ImatrixEntry>,
    /// The calibration files.
    pub datasets: Vec<String>,
    pub chunk_count: u32,
    /// Tokens per chunk (0 when unknown, as in legacy files).
    pub chunk_size: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ImatrixError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("{path}: not an imatrix file: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("the imatrix has no entry for {tensor:?}: was it made for another model? (it has {n} entries, e.g. {example:?})")]
    Missing { tensor: String, n: usize, example: String },
    #[error("the imatrix entry for {tensor:?} has {found} values but the tensor's rows have {expected}: it was made for another model")]
    Width { tensor: String, found: usize, expected: usize },
}

/// Bounds on what a legacy file may claim before anything is allocated.
const MAX_NAME: usize = 1 << 12;

impl Imatrix {
    /// From gathered statistics: `names` maps a statistic's key to the weight tensors that read
    /// that input (Q, K and V share one).
    pub fn from_stats<K: Ord>(stats: &BTreeMap<K, InputStats>, names: impl Fn(&K) -> Vec<String>, dataset: &str, chunk_count: u32, chunk_size: u32) -> Imatrix {
        let mut entries = BTreeMap::new();
        for (k, s) in stats {
            for name in names(k) {
                entries.insert(name, ImatrixEntry { sums: s.sum2.iter().map(|&v| v as f32).collect(), counts: vec![s.rows as f32] });
            }
        }
        Imatrix { entries, datasets: vec![dataset.to_string()], chunk_count, chunk_size }
    }

    /// The importance vector of `tensor`, checked against its row length.
    pub fn importance_for(&self, tensor: &str, row_len: usize) -> Result<Vec<f32>, ImatrixError> {
        let e = self.entries.get(tensor).ok_or_else(|| ImatrixError::Missing {
            tensor: tensor.into(),
            n: self.entries.len(),
            example: self.entries.keys().next().cloned().unwrap_or_default(),
        })?;
        if e.sums.len() != row_len {
            return Err(ImatrixError::Width { tensor: tensor.into(), found: e.sums.len(), expected: row_len });
        }
        Ok(e.importance())
    }

    /// Reads either form (GGUF by its magic, else legacy).
    pub fn read(path: &Path) -> Result<Imatrix, ImatrixError> {
        let bytes = std::fs::read(path).map_err(|source| ImatrixError::Io { path: path.into(), source })?;
        Self::from_bytes(bytes, path)
    }

    /// [`Imatrix::read`] on bytes in memory (`path` names them in errors).
    pub fn from_bytes(bytes: Vec<u8>, path: &Path) -> Result<Imatrix, ImatrixError> {
        if bytes.starts_with(b"GGUF") {
            Self::from_gguf(&GgufFile::from_bytes(bytes)?, path)
        } else {
            Self::from_legacy(&bytes, path)
        }
    }

    fn from_gguf(f: &GgufFile, path: &Path) -> Result<Imatrix, ImatrixError> {
        let bad = |reason: String| ImatrixError::Invalid { path: path.into(), reason };
        let h = &f.header;
        let datasets = match h.get("imatrix.datasets").and_then(|v| v.as_array()) {
            Some(GgufArray::String(v)) => v.clone(),
            _ => Vec::new(),
        };
        let u32_of = |k: &str| h.get(k).and_then(|v| v.as_u64()).map_or(0, |v| v.min(u32::MAX as u64) as u32);
        let mut entries = BTreeMap::new();
        for t in f.tensors() {
            let Some(name) = t.name.strip_suffix(".in_sum2") else { continue };
            let counts_t = f.tensor(&format!("{name}.counts")).ok_or_else(|| bad(format!("{} has no {name}.counts", t.name)))?;
            if t.ty != GgmlType::F32 || counts_t.ty != GgmlType::F32 {
                return Err(bad(format!("{name}: sums and counts must be F32")));
            }
            let sums = f.tensor_f32(t).map_err(|e| bad(e.to_string()))?;
            let counts = f.tensor_f32(counts_t).map_err(|e| bad(e.to_string()))?;
            if counts.is_empty() || !sums.len().is_multiple_of(counts.len()) || sums.iter().chain(&counts).any(|v| !v.is_finite() || *v < 0.0) {
                return Err(bad(format!("{name}: {} sums for {} counts, or values that are negative or not finite", sums.len(), counts.len())));
            }
            entries.insert(name.to_string(), ImatrixEntry { sums, counts });
        }
        if entries.is_empty() {
            return Err(bad("no <tensor>.in_sum2 entries".into()));
        }
        Ok(Imatrix { entries, datasets, chunk_count: u32_of("imatrix.chunk_count"), chunk_size: u32_of("imatrix.chunk_size") })
    }

    fn from_legacy(b: &[u8], path: &Path) -> Result<Imatrix, ImatrixError> {
        let bad = |at: usize, reason: &str| ImatrixError::Invalid { path: path.into(), reason: format!("{reason} at byte {at} (neither a GGUF imatrix nor a legacy .dat one)") };
        let mut at = 0usize;
        let i32_at = |at: &mut usize| -> Result<i32, ImatrixError> {
            let v = b.get(*at..*at + 4).ok_or_else(|| bad(*at, "truncated"))?;
            *at += 4;
            Ok(i32::from_le_bytes([v[0], v[1], v[2], v[3]]))
        };
        let n = i32_at(&mut at)?;
        // An entry takes at least 16 bytes: a count beyond what the file holds is refused.
        if n < 1 || n as usize > b.len() / 16 {
            return Err(bad(0, &format!("{n} entries")));
        }
        let mut entries = BTreeMap::new();
        for _ in 0..n {
            let len = i32_at(&mut at)?;
            if len < 1 || len as usize > MAX_NAME {
                return Err(bad(at - 4, &format!("a name of {len} bytes")));
            }
            let name = b.get(at..at + len as usize).ok_or_else(|| bad(at, "truncated name"))?;
            let name = std::str::from_utf8(name).map_err(|_| bad(at, "a name that is not UTF-8"))?.to_string();
            at += len as usize;
            let ncall = i32_at(&mut at)?;
            let nval = i32_at(&mut at)?;
            if nval < 1 || ncall < 0 || (nval as usize).checked_mul(4).is_none_or(|need| need > b.len() - at) {
                return Err(bad(at - 4, &format!("{name}: {nval} values")));
            }
            let values: Vec<f32> = b[at..at + 4 * nval as usize].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            at += 4 * nval as usize;
            if values.iter().any(|v| !v.is_finite() || *v < 0.0) {
                return Err(bad(at, &format!("{name}: values that are negative or not finite")));
            }
            // Stored: (sum / count) * ncall. As sums over ncall rows, the importance is the same.
            entries.insert(name, ImatrixEntry { sums: values, counts: vec![ncall as f32] });
        }
        let mut m = Imatrix { entries, datasets: Vec::new(), chunk_count: 0, chunk_size: 0 };
        if let Ok(c) = i32_at(&mut at) {
            m.chunk_count = c.max(0) as u32;
            if let Ok(len) = i32_at(&mut at) {
                if let Some(name) = (len > 0 && len as usize <= MAX_NAME).then(|| b.get(at..at + len as usize)).flatten() {
                    m.datasets.push(String::from_utf8_lossy(name).into_owned());
                }
            }
        }
        Ok(m)
    }

    /// The GGUF form's bytes.
    pub fn to_gguf_bytes(&self) -> Result<Vec<u8>, GgufError> {
        let mut meta = Metadata::new();
        meta.set("general.type", GgufValue::String("imatrix".into()));
        meta.set("imatrix.datasets", GgufValue::Array(GgufArray::String(self.datasets.clone())));
        meta.set("imatrix.chunk_count", GgufValue::U32(self.chunk_count));
        meta.set("imatrix.chunk_size", GgufValue::U32(self.chunk_size));
        let mut specs = Vec::new();
        for (name, e) in &self.entries {
            let n_mat = e.counts.len().max(1) as u64;
            specs.push(TensorSpec { name: format!("{name}.in_sum2"), dims: vec![e.sums.len() as u64 / n_mat, n_mat], ty: GgmlType::F32 });
            specs.push(TensorSpec { name: format!("{name}.counts"), dims: vec![1, n_mat], ty: GgmlType::F32 });
        }
        let mut out = Vec::new();
        let mut w = GgufWriter::new(&mut out, 3, &meta, specs)?;
        for e in self.entries.values() {
            w.write_tensor(&f32_bytes(&e.sums))?;
            w.write_tensor(&f32_bytes(&e.counts))?;
        }
        w.finish()?;
        Ok(out)
    }

    /// The legacy `.dat` form's bytes (`ncall` per entry: its rows over the chunk size, rounded
    /// up, as llama-imatrix writes it; the rows themselves when the chunk size is unknown).
    pub fn to_dat_bytes(&self) -> Vec<u8> {
        let mut out = (self.entries.len() as i32).to_le_bytes().to_vec();
        for (name, e) in &self.entries {
            out.extend_from_slice(&(name.len() as i32).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            let rows = e.counts.iter().fold(0f32, |a, &c| a.max(c)) as i64;
            let ncall = if self.chunk_size > 0 { (rows + self.chunk_size as i64 - 1) / self.chunk_size as i64 } else { rows };
            out.extend_from_slice(&(ncall as i32).to_le_bytes());
            out.extend_from_slice(&(e.sums.len() as i32).to_le_bytes());
            for v in e.importance() {
                out.extend_from_slice(&(v * ncall as f32).to_le_bytes());
            }
        }
        out.extend_from_slice(&(self.chunk_count as i32).to_le_bytes());
        let dataset = self.datasets.last().map(String::as_str).unwrap_or("");
        out.extend_from_slice(&(dataset.len() as i32).to_le_bytes());
        out.extend_from_slice(dataset.as_bytes());
        out
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Imatrix {
        let mut entries = BTreeMap::new();
        entries.insert("blk.0.attn_q.weight".to_string(), ImatrixEntry { sums: vec![4.0, 8.0, 0.5, 2.0], counts: vec![4.0] });
        entries.insert("blk.0.ffn_down.weight".to_string(), ImatrixEntry { sums: vec![1.0, 3.0], counts: vec![2.0] });
        Imatrix { entries, datasets: vec!["calib.txt".into()], chunk_count: 2, chunk_size: 2 }
    }

    #[test]
    fn both_forms_round_trip_to_the_same_importance() {
        let m = sample();
        let p = std::env::temp_dir().join(format!("smelt-imatrix-{}", std::process::id()));
        std::fs::write(&p, m.to_gguf_bytes().unwrap()).unwrap();
        assert_eq!(Imatrix::read(&p).unwrap(), m, "GGUF keeps everything");
        std::fs::write(&p, m.to_dat_bytes()).unwrap();
        let dat = Imatrix::read(&p).unwrap();
        assert_eq!((dat.chunk_count, dat.datasets.clone()), (2, vec!["calib.txt".to_string()]));
        for (name, e) in &m.entries {
            assert_eq!(dat.entries[name].importance(), e.importance(), "{name}");
        }
        assert_eq!(m.entries["blk.0.attn_q.weight"].importance(), [1.0, 2.0, 0.125, 0.5]);
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn broken_and_foreign_files_are_refused() {
        let m = sample();
        let dat = m.to_dat_bytes();
        let p = std::env::temp_dir().join(format!("smelt-imatrix-bad-{}", std::process::id()));
        // Every cut inside the entries fails; the trailer (chunk count, dataset) is optional,
        // as llama.cpp reads it.
        let trailer = 4 + 4 + "calib.txt".len();
        for cut in 0..dat.len() - trailer {
            std::fs::write(&p, &dat[..cut]).unwrap();
            assert!(Imatrix::read(&p).is_err(), "cut at {cut}");
        }
        let mut huge = dat.clone();
        huge[..4].copy_from_slice(&i32::MAX.to_le_bytes());
        std::fs::write(&p, &huge).unwrap();
        assert!(Imatrix::read(&p).is_err());
        assert!(matches!(m.importance_for("blk.9.attn_q.weight", 4), Err(ImatrixError::Missing { .. })));
        assert!(matches!(m.importance_for("blk.0.attn_q.weight", 8), Err(ImatrixError::Width { found: 4, expected: 8, .. })));
        let _ = std::fs::remove_file(&p);
    }
}
