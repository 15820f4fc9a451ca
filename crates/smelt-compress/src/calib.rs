//! Calibration statistics of the weight matrices' inputs, gathered by an observer during
//! forward passes over a calibration text.
//!
//! For each (layer, input) of [`MatrixInput`], over all `N` rows `x_r` seen (one per token):
//! - the importance vector `s_j = sum_r x_rj^2` (llama.cpp's imatrix `in_sum2`, with the row
//!   count `N`): `s_j / N` weighs column `j`'s rounding error;
//! - optionally the Hessian of the layer-wise reconstruction error used by GPTQ,
//!   `H = X^T X = sum_r x_r^T x_r` (`cols x cols`; the paper's `2 X X^T` without the constant).
//!
//! Products run in f32 through the GEMM kernels, one call per observation (at most a context of
//! rows), and are summed in f64 across observations, so the rounding of a long calibration run
//! stays that of one chunk. Memory: `8 cols^2` bytes per Hessian, e.g. on SmolLM2 (d = 576,
//! FFN 1536) 2.7 MB for each of the three 576-wide inputs and 18.9 MB for `ffn_down`'s, 26.8 MB a
//! layer; [`Collector::hessians_for`] chooses the layers that keep one.

use std::collections::BTreeMap;

use smelt_formats::GgmlType;
use smelt_kernels::matmul::{gemm, QMatrix};
use smelt_kernels::pool::ThreadPool;
use smelt_models::observe::{MatrixInput, Observer};

/// What was gathered for one (layer, input).
#[derive(Clone, Debug, PartialEq)]
pub struct InputStats {
    pub cols: usize,
    /// Rows (tokens) seen.
    pub rows: u64,
    /// `sum_r x_rj^2` per column.
    pub sum2: Vec<f64>,
    /// `sum_r x_rj` per column (the mean input a bias can stand in for when a column goes).
    pub sum: Vec<f64>,
    /// `X^T X`, row-major `cols x cols`, when gathered.
    pub hessian: Option<Vec<f64>>,
}

impl InputStats {
    /// The mean square of each column (`sum2 / rows`), the importance llama-quantize uses.
    pub fn importance(&self) -> Vec<f32> {
        let n = self.rows.max(1) as f64;
        self.sum2.iter().map(|s| (s / n) as f32).collect()
    }
}

/// An observer that gathers [`InputStats`] for every input it sees.
pub struct Collector<'p> {
    pool: &'p ThreadPool,
    pub stats: BTreeMap<(usize, MatrixInput), InputStats>,
    hessian_layers: std::collections::BTreeSet<usize>,
    /// Scratch: the transposed input and one product.
    xt: Vec<f32>,
    prod: Vec<f32>,
    scratch: Vec<u8>,
    /// The first error of a product (reported by [`Collector::finish`]).
    error: Option<smelt_kernels::KernelError>,
}

impl<'p> Collector<'p> {
    /// Importance vectors only.
    pub fn new(pool: &'p ThreadPool) -> Collector<'p> {
        Collector { pool, stats: BTreeMap::new(), hessian_layers: Default::default(), xt: Vec::new(), prod: Vec::new(), scratch: Vec::new(), error: None }
    }

    /// Also the Hessians of the inputs of `layers` (the output head counts as the layer after
    /// the last block).
    pub fn hessians_for(mut self, layers: impl IntoIterator<Item = usize>) -> Collector<'p> {
        self.hessian_layers = layers.into_iter().collect();
        self
    }

    /// The statistics, or the first error a product gave.
    pub fn finish(self) -> Result<BTreeMap<(usize, MatrixInput), InputStats>, smelt_kernels::KernelError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.stats),
        }
    }

    /// `h += x^T x` for `x` of `rows x cols`: `X^T X = A A^T` with `A = X^T` (`cols x rows`),
    /// one f32 GEMM, then summed into the f64 Hessian.
    fn add_gram(&mut self, x: &[f32], rows: usize, cols: usize, h: &mut [f64]) -> Result<(), smelt_kernels::KernelError> {
        self.xt.resize(rows * cols, 0.0);
        for (r, row) in x.chunks_exact(cols).enumerate() {
            for (c, &v) in row.iter().enumerate() {
                self.xt[c * rows + r] = v;
            }
        }
        self.prod.resize(cols * cols, 0.0);
        let a = QMatrix::new(GgmlType::F32, cols, rows, bytemuck::cast_slice(&self.xt))?;
        gemm(self.pool, &a, &self.xt, cols, &mut self.prod, &mut self.scratch)?;
        for (acc, &p) in h.iter_mut().zip(&self.prod) {
            *acc += p as f64;
        }
        Ok(())
    }
}

impl Observer for Collector<'_> {
    fn observe(&mut self, layer: usize, input: MatrixInput, x: &[f32], rows: usize, cols: usize) {
        let want_h = self.hessian_layers.contains(&layer);
        let e = self.stats.entry((layer, input)).or_insert_with(|| InputStats { cols, rows: 0, sum2: vec![0.0; cols], sum: vec![0.0; cols], hessian: want_h.then(|| vec![0.0; cols * cols]) });
        if e.cols != cols {
            return; // a model's widths do not change between passes
        }
        e.rows += rows as u64;
        for row in x.chunks_exact(cols) {
            for ((s2, s), &v) in e.sum2.iter_mut().zip(e.sum.iter_mut()).zip(row) {
                *s2 += (v as f64) * (v as f64);
                *s += v as f64;
            }
        }
        if let Some(mut h) = e.hessian.take() {
            if let Err(err) = self.add_gram(x, rows, cols, &mut h) {
                self.error.get_or_insert(err);
            }
            if let Some(e) = self.stats.get_mut(&(layer, input)) {
                e.hessian = Some(h);
            }
        }
    }
}

/// How a calibration text is run.
#[derive(Clone, Copy, Debug)]
pub struct CalibOptions {
    /// Tokens per chunk; each chunk runs from an empty context (llama-imatrix's `-c`).
    pub ctx: usize,
    /// Run at most this many chunks (default: all the text holds).
    pub max_chunks: Option<usize>,
    /// Also observe the output head's input (llama-imatrix's `--process-output`).
    pub process_output: bool,
}

impl Default for CalibOptions {
    fn default() -> Self {
        CalibOptions { ctx: 512, max_chunks: None, process_output: false }
    }
}

/// Runs `text` through a decoder in chunks of `opts.ctx` tokens (the last partial chunk is
/// dropped; a chunk begins with BOS when the tokenizer adds one), showing `obs` every matrix
/// input. `on_chunk(done, total)` is called after each chunk. Returns the chunks run.
pub fn run_decoder(
    model: &smelt_models::Llama,
    tok: &smelt_models::Tokenizer,
    pool: &ThreadPool,
    text: &str,
    opts: CalibOptions,
    obs: &mut dyn Observer,
    on_chunk: &mut dyn FnMut(usize, usize),
) -> Result<usize, crate::CompressError> {
    run_decoder_tokens(model, tok, pool, &tok.encode(text, false), opts, obs, on_chunk)
}

/// [`run_decoder`] on tokens already encoded.
pub fn run_decoder_tokens(
    model: &smelt_models::Llama,
    tok: &smelt_models::Tokenizer,
    pool: &ThreadPool,
    tokens: &[u32],
    opts: CalibOptions,
    obs: &mut dyn Observer,
    on_chunk: &mut dyn FnMut(usize, usize),
) -> Result<usize, crate::CompressError> {
    let ctx = opts.ctx.min(model.cfg.ctx_train);
    let available = tokens.len() / ctx.max(1);
    if ctx < 2 || available == 0 {
        return Err(crate::CompressError::CalibrationTooShort { tokens: tokens.len(), ctx });
    }
    let n = opts.max_chunks.map_or(available, |m| m.min(available));
    let mut sess = model.session(ctx);
    let mut chunk = vec![0u32; ctx];
    for i in 0..n {
        chunk.copy_from_slice(&tokens[i * ctx..(i + 1) * ctx]);
        if let (true, Some(bos)) = (tok.add_bos, tok.bos) {
            chunk[0] = bos;
        }
        sess.truncate(0);
        model.forward_observed(pool, &mut sess, &chunk, opts.process_output, Some(&mut *obs))?;
        on_chunk(i + 1, n);
    }
    Ok(n)
}

/// The importance matrix of a decoder's gathered statistics, under llama.cpp's tensor names.
/// With `opts.process_output`, the output head's entry is named after the head's own tensor
/// (`output.weight`, or `token_embd.weight` when the embedding is tied); without it there is
/// none, as in llama-imatrix.
pub fn decoder_imatrix(model: &smelt_models::Llama, stats: &BTreeMap<(usize, MatrixInput), InputStats>, dataset: &str, chunks: usize, opts: CalibOptions) -> crate::imatrix::Imatrix {
    let head = head_name(model);
    let names = |&(l, k): &(usize, MatrixInput)| match k {
        MatrixInput::Output if opts.process_output => vec![head.clone()],
        MatrixInput::Output => Vec::new(),
        _ => k.llama_tensors(l),
    };
    let ctx = opts.ctx.min(model.cfg.ctx_train);
    crate::imatrix::Imatrix::from_stats(stats, names, dataset, chunks as u32, ctx as u32)
}

/// The output head's tensor: `output.weight`, or `token_embd.weight` when the embedding is tied.
pub fn head_name(model: &smelt_models::Llama) -> String {
    model.output.as_ref().unwrap_or(&model.embed).name.clone()
}

/// The Hessian of the output head's input (`cols x cols`) under the head's tensor name
/// (`output.weight`, or `token_embd.weight` when the embedding is tied), when it was gathered
/// (the head is layer `n_layers` for [`Collector::hessians_for`]).
pub fn head_hessian<'s>(model: &smelt_models::Llama, stats: &'s BTreeMap<(usize, MatrixInput), InputStats>) -> Option<(String, &'s [f64])> {
    let head = head_name(model);
    let h = stats.get(&(model.layers.len(), MatrixInput::Output))?.hessian.as_deref()?;
    Some((head, h))
}

/// The gathered Hessians by weight tensor name (Q, K and V share one, as do gate and up); the
/// output head's, when gathered, under `head` (its tensor: `output.weight`, or
/// `token_embd.weight` when the embedding is tied, see [`head_hessian`]).
pub fn decoder_hessians<'s>(stats: &'s BTreeMap<(usize, MatrixInput), InputStats>, head: &str) -> BTreeMap<String, &'s [f64]> {
    let mut out = BTreeMap::new();
    for (&(l, k), s) in stats {
        if let Some(h) = &s.hessian {
            let names = match k {
                MatrixInput::Output => vec![head.to_string()],
                _ => k.llama_tensors(l),
            };
            for name in names {
                out.insert(name, h.as_slice());
            }
        }
    }
    out
}
