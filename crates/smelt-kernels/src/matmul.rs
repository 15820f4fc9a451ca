//! Matrix products over weight matrices of any registry type.
//!
//! A weight matrix `W` is `rows x cols`, row-major, each row a whole number of blocks (ggml's
//! layout: a linear layer `[out_features, in_features]` with dims `[cols, rows]`).
//!
//! - [`gemv`]: `y = W x` (one token: decode). The activation row is converted once to the
//!   weight type's activation format, then rows are split across the pool.
//! - [`fn@gemm`]: `Y = X W^T` for `m` activation rows (prefill). From [`DEQUANT_GEMM_MIN_ROWS`]
//!   rows on, weight rows are widened to f32 a chunk at a time ([`crate::dequant`]) and
//!   multiplied with the `gemm` crate: the widening is paid once per chunk for all `m` rows, and
//!   the f32 GEMM runs near the FMA peak. Below it, quantized weights reuse the dot kernels.

use std::cell::RefCell;

use smelt_formats::GgmlType;

use crate::act::convert_rows;
use crate::dot::{self, DotKernel, TILE_X};
use crate::pool::{Disjoint, ThreadPool};
use crate::KernelError;

/// A borrowed weight matrix.
#[derive(Clone, Copy, Debug)]
pub struct QMatrix<'a> {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
    row_bytes: usize,
}

impl<'a> QMatrix<'a> {
    /// Checks that `data` holds exactly `rows` rows of `cols` elements of `ty`.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, data: &'a [u8]) -> Result<Self, KernelError> {
        let (be, bb) = (ty.block_elems(), ty.block_bytes());
        if !cols.is_multiple_of(be) {
            return Err(KernelError::NotBlockMultiple { ty, n: cols, block: be });
        }
        let row_bytes = cols / be * bb;
        let need = row_bytes.checked_mul(rows).ok_or_else(|| KernelError::Shape(format!("{rows} x {cols} overflows")))?;
        if data.len() != need {
            return Err(KernelError::Shape(format!("{ty} {rows} x {cols} needs {need} bytes, got {}", data.len())));
        }
        Ok(QMatrix { ty, rows, cols, data, row_bytes })
    }

    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    pub fn row(&self, r: usize) -> &'a [u8] {
        &self.data[r * self.row_bytes..(r + 1) * self.row_bytes]
    }
}

fn kernel_for(ty: GgmlType) -> Result<DotKernel, KernelError> {
    dot::best(ty).ok_or_else(|| KernelError::NoKernel {
        ty,
        supported: dot::table().iter().map(|r| r.weight.name()).collect::<Vec<_>>().join(", "),
    })
}

/// Rows per task: about four tasks per thread, at least 16 rows.
fn rows_per_task(rows: usize, threads: usize) -> usize {
    rows.div_ceil(4 * threads).max(16)
}

/// `y = W x` with the fastest kernel of this machine. `scratch` holds the converted
/// activations (reuse it across calls to avoid allocating).
pub fn gemv(pool: &ThreadPool, w: &QMatrix, x: &[f32], y: &mut [f32], scratch: &mut Vec<u8>) -> Result<(), KernelError> {
    let k = kernel_for(w.ty)?;
    if x.len() != w.cols || y.len() != w.rows {
        return Err(KernelError::Shape(format!("W is {} x {}, x has {}, y has {}", w.rows, w.cols, x.len(), y.len())));
    }
    convert_rows(k.act, x, w.cols, scratch)?;
    gemv_prepared(pool, &k, w, scratch, y)
}

/// `y = W x` with activations already converted to `k.act` (for benchmarks and callers that
/// share one converted row between several matrices, e.g. Q, K and V).
pub fn gemv_prepared(pool: &ThreadPool, k: &DotKernel, w: &QMatrix, x_act: &[u8], y: &mut [f32]) -> Result<(), KernelError> {
    if k.weight != w.ty {
        return Err(KernelError::Shape(format!("kernel for {} used on {} weights", k.weight, w.ty)));
    }
    let need = k.act.row_bytes(w.cols)?;
    if x_act.len() < need {
        return Err(KernelError::Shape(format!("{} activations need {need} bytes, got {}", k.act, x_act.len())));
    }
    if y.len() != w.rows {
        return Err(KernelError::Shape(format!("y has {} entries, W has {} rows", y.len(), w.rows)));
    }
    let out = Disjoint::new(y);
    let rb = w.row_bytes;
    pool.for_chunks(w.rows, rows_per_task(w.rows, pool.n_threads()), &|r| {
        // SAFETY: chunks are disjoint; lengths were checked above; the kernel's ISA was detected.
        unsafe { k.call_rows(w.cols, &w.data[r.start * rb..r.end * rb], rb, x_act, out.slice(r)) };
    });
    Ok(())
}

/// `y_j = W_j x` for several matrices that read the same input (attention's Q, K and V; the
/// FFN's gate and up): the activation row is converted once and all rows go out in one
/// dispatch. Matrices whose types need different activation formats fall back to one
/// [`gemv`] each.
pub fn gemv_multi(pool: &ThreadPool, ws: &[&QMatrix], x: &[f32], ys: &mut [&mut [f32]], scratch: &mut Vec<u8>) -> Result<(), KernelError> {
    if ws.len() != ys.len() {
        return Err(KernelError::Shape(format!("{} matrices, {} outputs", ws.len(), ys.len())));
    }
    let kernels: Vec<DotKernel> = ws.iter().map(|w| kernel_for(w.ty)).collect::<Result<_, _>>()?;
    let same_act = kernels.windows(2).all(|k| k[0].act == k[1].act);
    if !same_act || ws.is_empty() {
        for ((w, y), _) in ws.iter().zip(ys.iter_mut()).zip(&kernels) {
            gemv(pool, w, x, y, scratch)?;
        }
        return Ok(());
    }
    for (w, y) in ws.iter().zip(ys.iter()) {
        if x.len() != w.cols || y.len() != w.rows {
            return Err(KernelError::Shape(format!("W is {} x {}, x has {}, y has {}", w.rows, w.cols, x.len(), y.len())));
        }
    }
    convert_rows(kernels[0].act, x, ws[0].cols, scratch)?;
    let total: usize = ws.iter().map(|w| w.rows).sum();
    let chunk = rows_per_task(total, pool.n_threads());
    // Chunks never straddle two matrices: (matrix, row range) per task.
    let mut tasks = Vec::new();
    for (i, w) in ws.iter().enumerate() {
        let mut r = 0;
        while r < w.rows {
            tasks.push((i, r..(r + chunk).min(w.rows)));
            r += chunk;
        }
    }
    let sinks: Vec<Disjoint<f32>> = ys.iter_mut().map(|y| Disjoint::new(y)).collect();
    let x_act: &[u8] = scratch;
    pool.run(tasks.len(), &|t| {
        let (i, r) = &tasks[t];
        let (w, k) = (ws[*i], &kernels[*i]);
        let rb = w.row_bytes;
        // SAFETY: tasks cover disjoint rows of each output; lengths checked above.
        unsafe { k.call_rows(w.cols, &w.data[r.start * rb..r.end * rb], rb, x_act, sinks[*i].slice(r.clone())) };
    });
    Ok(())
}

thread_local! {
    static WIDE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// From this many activation rows on, [`fn@gemm`] widens weights to f32 and uses an f32 GEMM.
pub const DEQUANT_GEMM_MIN_ROWS: usize = 16;

/// `Y = X W^T`: `x` is `m x cols`, `y` is `m x rows`, both row-major.
pub fn gemm(pool: &ThreadPool, w: &QMatrix, x: &[f32], m: usize, y: &mut [f32], scratch: &mut Vec<u8>) -> Result<(), KernelError> {
    if x.len() != m * w.cols || y.len() != m * w.rows {
        return Err(KernelError::Shape(format!("W is {} x {}, X has {} values for {m} rows, Y has {}", w.rows, w.cols, x.len(), y.len())));
    }
    if m == 0 {
        return Ok(());
    }
    let float = matches!(w.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
    match w.ty {
        _ if float || (m >= DEQUANT_GEMM_MIN_ROWS && w.ty.can_dequantize()) => gemm_float(pool, w, x, m, y),
        _ => {
            let k = kernel_for(w.ty)?;
            crate::act::convert_rows_pool(pool, k.act, x, w.cols, scratch)?;
            gemm_quantized(pool, &k, w, scratch, m, y)
        }
    }
}

/// Quantized weights: each task takes a chunk of weight rows and dots every one with all `m`
/// activation rows.
pub fn gemm_quantized(pool: &ThreadPool, k: &DotKernel, w: &QMatrix, x_act: &[u8], m: usize, y: &mut [f32]) -> Result<(), KernelError> {
    let act_row = k.act.row_bytes(w.cols)?;
    if x_act.len() != m * act_row || y.len() != m * w.rows || k.weight != w.ty {
        return Err(KernelError::Shape(format!("activations {} bytes for {m} rows of {act_row}", x_act.len())));
    }
    let out = Disjoint::new(y);
    pool.for_chunks(w.rows, rows_per_task(w.rows, pool.n_threads()), &|r| {
        // SAFETY: lengths checked above; each task writes its own columns `r` of every row.
        unsafe { quantized_rows(k, w, r, x_act, act_row, m, &out) };
    });
    Ok(())
}

/// Weight rows `r` of `w` dotted with all `m` activation rows (converted, `act_row` bytes each):
/// `Y[t, j] = x_t . W_j` into `out` (`m` rows of `w.rows`). With a tile kernel, up to
/// [`TILE_X`] activation rows per pass over the weights, each block unpacked once for all; the
/// task's weight rows stay in cache while the activation rows pass over them.
///
/// # Safety
/// `x_act` holds `m` rows of `act_row = k.act.row_bytes(w.cols)` bytes, `out` `m` rows of
/// `w.rows`, `k.weight == w.ty`, and no one else writes columns `r` of `out` during the call.
unsafe fn quantized_rows(k: &DotKernel, w: &QMatrix, r: std::ops::Range<usize>, x_act: &[u8], act_row: usize, m: usize, out: &Disjoint<f32>) {
    let (rows, rb) = (w.rows, w.row_bytes);
    let wr = &w.data[r.start * rb..r.end * rb];
    if k.has_tile() && m > 1 {
        let mut t = 0;
        while t < m {
            let mx = (m - t).min(TILE_X);
            let xs: [&[u8]; TILE_X] = std::array::from_fn(|j| &x_act[(t + j.min(mx - 1)) * act_row..(t + j.min(mx - 1) + 1) * act_row]);
            let mut outs: [&mut [f32]; TILE_X] = Default::default();
            for (j, o) in outs.iter_mut().enumerate().take(mx) {
                *o = out.slice((t + j) * rows + r.start..(t + j) * rows + r.end);
            }
            k.call_tile(w.cols, wr, rb, &xs[..mx], &mut outs[..mx]);
            t += mx;
        }
        return;
    }
    for t in 0..m {
        k.call_rows(w.cols, wr, rb, &x_act[t * act_row..(t + 1) * act_row], out.slice(t * rows + r.start..t * rows + r.end));
    }
}

/// `Y_j = X W_j^T` for several matrices that read the same `m` activation rows (attention's Q,
/// K and V; the FFN's gate and up), `ys[j]` being `m` rows of `ws[j].rows`. Below
/// [`DEQUANT_GEMM_MIN_ROWS`] rows (several sequences decoding together) with quantized weights
/// of one activation format, the rows are converted once and all matrices' rows go out in one
/// dispatch; otherwise one [`fn@gemm`] each.
pub fn gemm_multi(pool: &ThreadPool, ws: &[&QMatrix], x: &[f32], m: usize, ys: &mut [&mut [f32]], scratch: &mut Vec<u8>) -> Result<(), KernelError> {
    if ws.len() != ys.len() || ws.is_empty() {
        return Err(KernelError::Shape(format!("{} matrices, {} outputs", ws.len(), ys.len())));
    }
    for (w, y) in ws.iter().zip(ys.iter()) {
        if w.cols != ws[0].cols || x.len() != m * w.cols || y.len() != m * w.rows {
            return Err(KernelError::Shape(format!("W is {} x {}, X has {} values for {m} rows, Y has {}", w.rows, w.cols, x.len(), y.len())));
        }
    }
    let float = ws.iter().any(|w| matches!(w.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) || (m >= DEQUANT_GEMM_MIN_ROWS && w.ty.can_dequantize()));
    let kernels: Vec<DotKernel> = ws.iter().map(|w| kernel_for(w.ty)).collect::<Result<_, _>>()?;
    if m == 0 || float || !kernels.windows(2).all(|k| k[0].act == k[1].act) {
        for (w, y) in ws.iter().zip(ys.iter_mut()) {
            gemm(pool, w, x, m, y, scratch)?;
        }
        return Ok(());
    }
    crate::act::convert_rows_pool(pool, kernels[0].act, x, ws[0].cols, scratch)?;
    let act_row = kernels[0].act.row_bytes(ws[0].cols)?;
    let total: usize = ws.iter().map(|w| w.rows).sum();
    let chunk = rows_per_task(total, pool.n_threads());
    // Chunks never straddle two matrices: (matrix, row range) per task.
    let tasks: Vec<(usize, std::ops::Range<usize>)> = ws.iter().enumerate().flat_map(|(i, w)| (0..w.rows).step_by(chunk).map(move |r| (i, r..(r + chunk).min(w.rows)))).collect();
    let sinks: Vec<Disjoint<f32>> = ys.iter_mut().map(|y| Disjoint::new(y)).collect();
    let x_act: &[u8] = scratch;
    pool.run(tasks.len(), &|t| {
        let (i, r) = &tasks[t];
        // SAFETY: lengths checked above; the tasks cover disjoint rows of each matrix.
        unsafe { quantized_rows(&kernels[*i], ws[*i], r.clone(), x_act, act_row, m, &sinks[*i]) };
    });
    Ok(())
}

/// The `gemm` crate on chunks of weight rows, widened to f32 unless stored as F32. Two chunks
/// per thread keep both threads busy to the end; inside a pool task (one thread) the whole
/// matrix is one call, so the activations are packed once.
fn gemm_float(pool: &ThreadPool, w: &QMatrix, x: &[f32], m: usize, y: &mut [f32]) -> Result<(), KernelError> {
    let (rows, cols) = (w.rows, w.cols);
    let out = Disjoint::new(y);
    let threads = pool.threads_here();
    let chunk = if threads == 1 { rows } else { rows.div_ceil(2 * threads).max(16) };
    pool.for_chunks(rows, chunk, &|r| {
        let n = r.len();
        let run = |wf: &[f32]| {
            // dst (m x n, row stride `rows`) = X (m x cols) * Wchunk^T (cols x n).
            // SAFETY: the pointers cover the stated extents (Y is m x rows); this task alone
            // writes columns `r` of Y.
            unsafe {
                let dst = out.as_mut_ptr().add(r.start);
                gemm::gemm(
                    m, n, cols,
                    dst, 1, rows as isize, false,
                    x.as_ptr(), 1, cols as isize,
                    wf.as_ptr(), cols as isize, 1,
                    0.0, 1.0, false, false, false,
                    gemm::Parallelism::None,
                );
            }
        };
        match w.ty {
            GgmlType::F32 => {
                let bytes = &w.data[r.start * w.row_bytes..r.end * w.row_bytes];
                match bytemuck::try_cast_slice::<u8, f32>(bytes) {
                    Ok(wf) => run(wf),
                    Err(_) => run(&bytemuck::pod_collect_to_vec::<u8, f32>(bytes)),
                }
            }
            _ => WIDE.with(|buf| {
                let mut buf = buf.borrow_mut();
                buf.resize(n * cols, 0.0);
                let bytes = &w.data[r.start * w.row_bytes..r.end * w.row_bytes];
                // Row lengths were checked in `QMatrix::new`; callers only send dequantizable types.
                if crate::dequant::dequantize(w.ty, bytes, &mut buf).is_ok() {
                    run(&buf);
                }
            }),
        }
    });
    Ok(())
}
