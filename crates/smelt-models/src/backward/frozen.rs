//! Backward through a frozen linear of any ggml type: the base under low-rank adapters, kept in
//! memory in its own (quantized) type. The weights take no gradient; only the input's flows:
//! for `y = x W^T` (`x: t x i`, `W: o x i`), `dx = dy W` (`t x o` by `o x i`). The forward is the
//! inference product ([`Linear::forward_batch`]).
//!
//! `W` is never widened whole. [`FROZEN_TILE`] of its rows at a time are dequantized (the rows
//! split over the pool) into an f32 tile (`FROZEN_TILE x i`: 1.5 MB for `i = 1536`), and each
//! thread adds its rows of `dy[:, tile rows] . tile` into `dx` through `gemm`:
//! ```text
//! dx[r, :] (+)= sum over tiles T of dy[r, T] W[T, :]
//! ```
//! Work: `2 t o i` FLOP for the products plus one dequantization of `W` per call.

use std::sync::atomic::{AtomicBool, Ordering};

use smelt_formats::quant::dequantize;
use smelt_kernels::pool::{Disjoint, ThreadPool};

use super::par::row_chunk;
use crate::linear::Linear;
use crate::ModelError;

/// Rows of a frozen matrix widened to f32 at a time.
pub const FROZEN_TILE: usize = 256;

/// `dx (t x i) = dy (t x o) W` for a frozen `W` of any type (`+=` when `accumulate`), on the
/// pool; memory beyond `dx` is one `FROZEN_TILE x i` tile.
pub fn frozen_linear_backward(pool: &ThreadPool, w: &Linear, dy: &[f32], t: usize, dx: &mut [f32], accumulate: bool) -> Result<(), ModelError> {
    let (o, i) = (w.rows, w.cols);
    if dy.len() != t * o || dx.len() != t * i {
        return Err(ModelError::hyper(format!("{} (frozen backward)", w.name), format!("{} output and {} input gradients", dy.len(), dx.len()), format!("expected {t} x {o} and {t} x {i}")));
    }
    if !accumulate {
        dx.fill(0.0);
    }
    if t == 0 || o == 0 || i == 0 {
        return Ok(());
    }
    let (rb, bytes) = (w.row_bytes(), w.bytes());
    let mut tile = vec![0f32; FROZEN_TILE.min(o) * i];
    let failed = AtomicBool::new(false);
    for r0 in (0..o).step_by(FROZEN_TILE) {
        let n = FROZEN_TILE.min(o - r0);
        {
            let sink = Disjoint::new(&mut tile[..n * i]);
            pool.for_chunks(n, n.div_ceil(pool.threads_here().max(1)).max(1), &|r| {
                // SAFETY: each task writes its own rows of the tile.
                let out = unsafe { sink.slice(r.start * i..r.end * i) };
                if dequantize(w.ty, &bytes[(r0 + r.start) * rb..(r0 + r.end) * rb], out).is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
            });
        }
        if failed.load(Ordering::Relaxed) {
            // Only a file whose blocks do not decode gets here; say which rows.
            let mut probe = vec![0f32; i];
            for r in r0..r0 + n {
                dequantize(w.ty, &bytes[r * rb..(r + 1) * rb], &mut probe).map_err(|e| ModelError::from(e).in_tensor(&w.name))?;
            }
        }
        let (out, tile) = (Disjoint::new(&mut *dx), &tile);
        pool.for_chunks(t, row_chunk(pool, t), &|r| {
            // dx[r, :] += dy[r, r0..r0+n] (|r| x n, row stride o) . tile (n x i).
            // SAFETY: rows `r` of dx belong to this task; the strides stay inside `dy` and the tile.
            unsafe {
                gemm::gemm(r.len(), i, n, out.as_mut_ptr().add(r.start * i), 1, i as isize, true, dy.as_ptr().add(r.start * o + r0), 1, o as isize, tile.as_ptr(), 1, i as isize, 1.0f32, 1.0f32, false, false, false, gemm::Parallelism::None);
            }
        });
    }
    Ok(())
}
