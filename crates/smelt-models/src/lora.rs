//! Low-rank adapters (LoRA, Hu et al. 2021, arXiv:2106.09685) and llama.cpp's adapter files.
//!
//! An adapter changes a frozen weight `W` (`o x i`, any ggml type) by a product of two thin f32
//! matrices, without touching `W`:
//! ```text
//! y = x W^T + s (x A^T) B^T        A: r x i, B: o x r, s = alpha / r (1 when alpha = 0)
//! ```
//! llama.cpp applies adapters the same way at run time (`build_lora_mm`: `W x + s B (A x)`).
//! Its file (what `convert_lora_to_gguf.py` writes and `llama-cli --lora` reads) is a GGUF with
//! `general.type = "adapter"`, `general.architecture` of the base, `adapter.type = "lora"`,
//! `adapter.lora.alpha` (f32), and for each adapted tensor `NAME` of the base two tensors:
//! `NAME.lora_a` with ggml dims `[i, r]` (A, row-major `r x i`) and `NAME.lora_b` with dims
//! `[r, o]` (B, row-major `o x r`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use smelt_formats::fsutil::write_atomic;
use smelt_formats::gguf::{GgufValue, GgufWriter, Metadata, TensorSpec};
use smelt_formats::quant::dequantize_to_vec;
use smelt_formats::{GgmlType, GgufError, GgufFile};

use crate::backward::matmul;
use crate::error::check_finite;
use crate::ModelError;

/// One adapted matrix: `A` (`rank x cols`) and `B` (`rows x rank`), row-major f32.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraPair {
    pub rank: usize,
    /// Input width `i` of the base matrix.
    pub cols: usize,
    /// Output width `o` of the base matrix.
    pub rows: usize,
    pub a: Vec<f32>, // (rank, cols)
    pub b: Vec<f32>, // (rows, rank)
}

impl LoraPair {
    /// Checks the lengths against the shape.
    pub fn new(rank: usize, rows: usize, cols: usize, a: Vec<f32>, b: Vec<f32>) -> Result<LoraPair, ModelError> {
        if rank == 0 || a.len() != rank * cols || b.len() != rows * rank {
            return Err(ModelError::hyper("LoRA pair", format!("rank {rank}, A {} values, B {} values", a.len(), b.len()), format!("expected a rank of at least 1, A {rank} x {cols} and B {rows} x {rank}")));
        }
        Ok(LoraPair { rank, cols, rows, a, b })
    }

    /// `y (m x rows) += s (x A^T) B^T` for `m` rows of `x` (`m x cols`).
    pub fn add_to(&self, x: &[f32], m: usize, s: f32, y: &mut [f32]) {
        let mut u = vec![0f32; m * self.rank];
        matmul(&mut u, x, &self.a, (m, self.rank, self.cols), false, true, false);
        u.iter_mut().for_each(|v| *v *= s);
        matmul(y, &u, &self.b, (m, self.rows, self.rank), false, true, true);
    }

    /// `s B A` (`rows x cols`), the change the adapter makes to the weight.
    pub fn delta(&self, s: f32) -> Vec<f32> {
        let mut d = vec![0f32; self.rows * self.cols];
        matmul(&mut d, &self.b, &self.a, (self.rows, self.cols, self.rank), false, false, false);
        d.iter_mut().for_each(|v| *v *= s);
        d
    }
}

/// A LoRA adapter: pairs by the base tensor's GGUF name (`blk.3.attn_q.weight`).
#[derive(Clone, Debug, PartialEq)]
pub struct LoraAdapter {
    /// `general.architecture` of the base (`llama`).
    pub arch: String,
    /// `adapter.lora.alpha`; 0 means a scale of 1 (llama.cpp's rule).
    pub alpha: f32,
    pub pairs: BTreeMap<String, Arc<LoraPair>>,
}

/// Why an adapter file cannot be used.
fn bad_file(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::SideFile { path: path.to_path_buf(), reason: reason.into() }
}

impl LoraAdapter {
    /// The scale `s` of a pair of rank `r`: `alpha / r`, or 1 when alpha is 0.
    pub fn scale(&self, rank: usize) -> f32 {
        if self.alpha == 0.0 {
            1.0
        } else {
            self.alpha / rank as f32
        }
    }

    /// Reads a llama.cpp LoRA adapter GGUF (pairs of any type llama.cpp writes: F32, F16, BF16,
    /// Q8_0, ...; widened to f32). Refuses other GGUF files, unpaired or mis-shaped tensors and
    /// non-finite values.
    pub fn open(path: &Path) -> Result<LoraAdapter, ModelError> {
        let file = GgufFile::open(path)?;
        let meta = &file.header.metadata;
        let s = |k: &str| meta.get(k).and_then(GgufValue::as_str).unwrap_or("");
        if s("general.type") != "adapter" || s("adapter.type") != "lora" {
            return Err(bad_file(path, format!("not a LoRA adapter (general.type {:?}, adapter.type {:?}; expected \"adapter\" and \"lora\"): give a file written by `smelt finetune` or llama.cpp's convert_lora_to_gguf.py", s("general.type"), s("adapter.type"))));
        }
        let arch = s("general.architecture").to_string();
        let alpha = meta.get("adapter.lora.alpha").and_then(GgufValue::as_f64).unwrap_or(0.0) as f32;
        if !alpha.is_finite() || alpha < 0.0 {
            return Err(bad_file(path, format!("adapter.lora.alpha = {alpha}: must be a finite number >= 0")));
        }
        // Per base tensor: (dims, values) of lora_a and of lora_b.
        type Half = Option<(Vec<u64>, Vec<f32>)>;
        let mut halves: BTreeMap<String, [Half; 2]> = BTreeMap::new();
        for t in file.tensors() {
            let (base, which) = match (t.name.strip_suffix(".lora_a"), t.name.strip_suffix(".lora_b")) {
                (Some(b), _) => (b, 0),
                (_, Some(b)) => (b, 1),
                _ => return Err(bad_file(path, format!("tensor {:?} is neither a .lora_a nor a .lora_b", t.name))),
            };
            if t.dims.len() != 2 {
                return Err(bad_file(path, format!("tensor {:?} has {} dimensions, expected 2", t.name, t.dims.len())));
            }
            let values = dequantize_to_vec(t.ty, file.tensor_data(t)).map_err(|e| ModelError::from(e).in_tensor(&t.name))?;
            check_finite(&t.name, &values)?;
            halves.entry(base.to_string()).or_default()[which] = Some((t.dims.clone(), values));
        }
        let mut pairs = BTreeMap::new();
        for (name, [a, b]) in halves {
            let (Some((da, a)), Some((db, b))) = (a, b) else {
                return Err(bad_file(path, format!("{name}: the LoRA pair is missing its {}", "lora_a or lora_b")));
            };
            // A: dims [cols, rank]; B: dims [rank, rows].
            let (cols, rank, rows) = (da[0] as usize, da[1] as usize, db[1] as usize);
            if db[0] as usize != rank {
                return Err(bad_file(path, format!("{name}: lora_a has rank {rank} (dims {da:?}) but lora_b dims {db:?}; lora_a must be stored as [in, rank] and lora_b as [rank, out]")));
            }
            pairs.insert(name, Arc::new(LoraPair::new(rank, rows, cols, a, b)?));
        }
        if pairs.is_empty() {
            return Err(bad_file(path, "the adapter holds no tensors"));
        }
        Ok(LoraAdapter { arch, alpha, pairs })
    }

    /// Writes the adapter in llama.cpp's form (F32 tensors), atomically; `base_name` goes into
    /// `general.name`.
    pub fn save(&self, path: &Path, base_name: Option<&str>) -> Result<u64, ModelError> {
        let mut meta = Metadata::new();
        meta.set("general.architecture", GgufValue::String(self.arch.clone()));
        meta.set("general.type", GgufValue::String("adapter".into()));
        if let Some(n) = base_name {
            meta.set("general.name", GgufValue::String(format!("{n} LoRA")));
        }
        meta.set("adapter.type", GgufValue::String("lora".into()));
        meta.set("adapter.lora.alpha", GgufValue::F32(self.alpha));
        meta.set("general.quantized_by", GgufValue::String(format!("smelt {}", env!("CARGO_PKG_VERSION"))));
        let mut specs = Vec::new();
        let mut data: Vec<&[f32]> = Vec::new();
        for (name, p) in &self.pairs {
            specs.push(TensorSpec { name: format!("{name}.lora_a"), dims: vec![p.cols as u64, p.rank as u64], ty: GgmlType::F32 });
            specs.push(TensorSpec { name: format!("{name}.lora_b"), dims: vec![p.rank as u64, p.rows as u64], ty: GgmlType::F32 });
            data.push(&p.a);
            data.push(&p.b);
        }
        write_atomic(
            path,
            |w| -> Result<(), ModelError> {
                let mut gw = GgufWriter::new(&mut *w, 3, &meta, specs)?;
                for d in &data {
                    let bytes: Vec<u8> = d.iter().flat_map(|v| v.to_le_bytes()).collect();
                    gw.write_tensor(&bytes)?;
                }
                gw.finish()?;
                Ok(())
            },
            |path, source| ModelError::Gguf(GgufError::Write { path, source }),
        )?;
        Ok(std::fs::metadata(path).map(|m| m.len()).unwrap_or(0))
    }

    /// Parameters of all pairs.
    pub fn n_params(&self) -> usize {
        self.pairs.values().map(|p| p.a.len() + p.b.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_adds_scaled_low_rank_product() {
        // A = [[1, 2, 3]], B = [[1], [-1]]: x A^T = 1 + 4 + 9 = 14 for x = [1, 2, 3].
        let p = LoraPair::new(1, 2, 3, vec![1.0, 2.0, 3.0], vec![1.0, -1.0]).unwrap();
        let mut y = vec![10.0, 10.0];
        p.add_to(&[1.0, 2.0, 3.0], 1, 0.5, &mut y);
        assert_eq!(y, vec![17.0, 3.0]);
        assert_eq!(p.delta(2.0), vec![2.0, 4.0, 6.0, -2.0, -4.0, -6.0]);
        assert!(LoraPair::new(0, 2, 3, vec![], vec![]).is_err());
        assert!(LoraPair::new(1, 2, 3, vec![1.0; 3], vec![1.0; 3]).is_err());
    }

    #[test]
    fn adapter_file_round_trips_and_refuses_strangers() {
        let dir = std::env::temp_dir().join(format!("smelt-lora-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = LoraPair::new(2, 3, 4, (0..8).map(|v| v as f32).collect(), (0..6).map(|v| -(v as f32)).collect()).unwrap();
        let ad = LoraAdapter { arch: "llama".into(), alpha: 4.0, pairs: [("blk.0.attn_q.weight".to_string(), Arc::new(p))].into() };
        let path = dir.join("a.gguf");
        ad.save(&path, Some("tiny")).unwrap();
        let back = LoraAdapter::open(&path).unwrap();
        assert_eq!(back, ad);
        assert_eq!(back.scale(2), 2.0);
        // A plain model file is not an adapter.
        let mut meta = Metadata::new();
        meta.set("general.architecture", GgufValue::String("llama".into()));
        let other = dir.join("m.gguf");
        let mut bytes = Vec::new();
        GgufWriter::new(&mut bytes, 3, &meta, vec![]).unwrap().finish().unwrap();
        std::fs::write(&other, bytes).unwrap();
        assert!(LoraAdapter::open(&other).unwrap_err().to_string().contains("not a LoRA adapter"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
