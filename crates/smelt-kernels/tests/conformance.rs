//! Every kernel of the table on every ISA this machine has, against its scalar twin, with the
//! named tolerances of `smelt_kernels::tolerance`; and the scalar twins themselves against a
//! plain f64 sum over the reference dequantization (so the oracle is checked too).
//!
//! Weights come two ways: real quantizations of random signals (what models contain) and random
//! bytes with well-formed scales (every bit pattern of the quants).

use smelt_formats::quant::quantize_to_vec;
use smelt_formats::GgmlType;
use smelt_kernels::act::convert_rows;
use smelt_kernels::cpu::{self, Isa};
use smelt_kernels::dot::{exact_f64, kernel, kernel_at, table, ActFormat};
use smelt_kernels::tolerance::{DOT_FLOAT, DOT_QUANTIZED, MATMUL};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn signal(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|i| self.uniform() * scale * if i % 17 == 0 { 4.0 } else { 1.0 }).collect()
    }
}

/// Byte offsets of the floating-point scale fields of each block type (f16 unless Q8_K).
fn scale_fields(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::IQ4_NL => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q8_1 | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q4_0_S24 | GgmlType::Q8_0_S24 => &[0, 2],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q6_K => &[208],
        GgmlType::IQ1_S | GgmlType::IQ2_XXS | GgmlType::IQ2_XS | GgmlType::IQ2_S | GgmlType::IQ3_XXS | GgmlType::IQ3_S | GgmlType::IQ4_XS => &[0],
        _ => &[],
    }
}

fn random_blocks(rng: &mut Rng, ty: GgmlType, n: usize) -> Vec<u8> {
    let (be, bb) = (ty.block_elems(), ty.block_bytes());
    if be == 1 {
        // Float types: random bytes would be NaNs and infinities; use random values.
        return quantize_to_vec(ty, &rng.signal(n, 0.5)).unwrap();
    }
    let mut v: Vec<u8> = (0..n / be * bb).map(|_| rng.next() as u8).collect();
    for b in v.chunks_exact_mut(bb) {
        if ty == GgmlType::Q8_K {
            b[..4].copy_from_slice(&(rng.uniform() * 0.01).to_le_bytes());
        }
        for &off in scale_fields(ty) {
            b[off..off + 2].copy_from_slice(&half::f16::from_f32(rng.uniform() * 0.05).to_le_bytes());
        }
        if ty == GgmlType::IQ1_M {
            // IQ1_M's f16 scale lives in the top nibbles of its last four u16, low nibble first.
            let d = half::f16::from_f32(rng.uniform() * 0.05).to_bits();
            for i in 0..4 {
                let o = bb - 8 + 2 * i;
                b[o + 1] = (b[o + 1] & 0x0F) | (((d >> (4 * i)) & 0xF) as u8) << 4;
            }
        }
    }
    v
}

fn weight_sizes(ty: GgmlType) -> Vec<usize> {
    match ty.block_elems() {
        1 => vec![1, 7, 8, 31, 33, 64, 576, 1003],
        32 => vec![32, 64, 96, 576, 1536],
        64 => vec![64, 128, 192, 576, 1536],
        _ => vec![256, 512, 1536],
    }
}

#[test]
fn simd_kernels_match_their_scalar_twins() {
    let isas = cpu::available();
    eprintln!("ISA levels on this machine: {isas:?} (features {:?})", cpu::features());
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let mut checked = 0;
    for row in table() {
        for n in weight_sizes(row.weight) {
            let mut weights = vec![random_blocks(&mut rng, row.weight, n)];
            if row.weight.can_quantize() {
                weights.push(quantize_to_vec(row.weight, &rng.signal(n, 0.05)).unwrap());
            }
            for w in &weights {
                for xscale in [1.0f32, 1e-3, 300.0] {
                    let mut x = Vec::new();
                    convert_rows(row.act, &rng.signal(n, xscale), n, &mut x).unwrap();
                    let scalar = kernel(Isa::Scalar, row.weight).unwrap().dot(n, w, &x).unwrap();
                    let (abs_sum, exact) = exact_f64(row.weight, w, &x).unwrap();
                    // The oracle itself: the scalar twin against an f64 sum.
                    MATMUL.check(scalar, exact as f32, abs_sum as f32).unwrap_or_else(|e| panic!("scalar {} n={n}: {e}", row.weight));
                    for &isa in &isas[1..] {
                        let Some(k) = kernel(isa, row.weight) else { continue };
                        let got = k.dot(n, w, &x).unwrap();
                        let tol = if row.act == ActFormat::F32 { DOT_FLOAT } else { DOT_QUANTIZED };
                        tol.check(got, scalar, abs_sum as f32).unwrap_or_else(|e| panic!("{isa} {} n={n}: {e}", row.weight));
                        checked += 1;
                    }
                }
            }
        }
    }
    if isas.len() > 1 {
        assert!(checked > 300, "only {checked} SIMD comparisons ran");
    }
    eprintln!("{checked} SIMD results compared with their scalar twins");
}

#[test]
fn multi_row_kernels_match_the_scalar_twin_row_by_row() {
    let mut rng = Rng(0xA110_F7E5);
    let mut checked = 0;
    for row in table() {
        let n = match row.weight.block_elems() { 256 => 512, 64 => 192, _ => 96 };
        let row_bytes = n / row.weight.block_elems() * row.weight.block_bytes();
        let mut x = Vec::new();
        convert_rows(row.act, &rng.signal(n, 1.0), n, &mut x).unwrap();
        let scalar = kernel(Isa::Scalar, row.weight).unwrap();
        for &isa in cpu::available() {
            let Some(k) = kernel(isa, row.weight) else { continue };
            for nrows in [1, 2, 3, 5] {
                // Contiguous rows, then rows with a gap of 7 bytes between them.
                for gap in [0, 7] {
                    let stride = row_bytes + gap;
                    let mut w = vec![0u8; stride * nrows];
                    for r in 0..nrows {
                        w[r * stride..r * stride + row_bytes].copy_from_slice(&random_blocks(&mut rng, row.weight, n));
                    }
                    let mut out = vec![f32::NAN; nrows];
                    k.rows(n, &w, stride, &x, &mut out).unwrap();
                    for (r, &got) in out.iter().enumerate() {
                        let wr = &w[r * stride..r * stride + row_bytes];
                        let want = scalar.dot(n, wr, &x).unwrap();
                        let (abs_sum, _) = exact_f64(row.weight, wr, &x).unwrap();
                        let tol = if row.act == ActFormat::F32 { DOT_FLOAT } else { DOT_QUANTIZED };
                        tol.check(got, want, abs_sum as f32).unwrap_or_else(|e| panic!("{isa} rows {} nrows={nrows} gap={gap} row {r}: {e}", row.weight));
                        checked += 1;
                    }
                }
            }
        }
    }
    assert!(checked >= table().len() * 22, "{checked}");
}

/// The several-activation-row kernels ([`smelt_kernels::dot::TileFn`], batched decoding) give
/// every (weight row, activation row) pair the scalar twin's dot product within the kernels'
/// tolerance, for 1 to TILE_X activation rows, odd row counts and gapped rows; kernels without a
/// tile form run the same calls through their row loop.
#[test]
fn tile_kernels_match_the_scalar_twin_for_every_pair() {
    use smelt_kernels::dot::TILE_X;
    let mut rng = Rng(0x7115_0F0E);
    let (mut checked, mut tiled, mut wide_tiled) = (0, 0, 0);
    for row in table() {
        // 96 = 3 blocks: one pair and an odd last block for the AVX-512 tiles.
        let n = match row.weight.block_elems() { 256 => 512, 64 => 192, _ => 96 };
        let row_bytes = n / row.weight.block_elems() * row.weight.block_bytes();
        let xs: Vec<Vec<u8>> = (0..TILE_X)
            .map(|_| {
                let mut x = Vec::new();
                convert_rows(row.act, &rng.signal(n, 1.0), n, &mut x).unwrap();
                x
            })
            .collect();
        let scalar = kernel(Isa::Scalar, row.weight).unwrap();
        // Both tile forms of the AVX2 level where the CPU has AVX-512 (see `cpu::avx512`).
        let wides: &[bool] = if cpu::has_avx512() { &[false, true] } else { &[false] };
        for (&isa, &wide) in cpu::available().iter().flat_map(|i| wides.iter().map(move |w| (i, w))) {
            let Some(k) = kernel_at(isa, row.weight, wide) else { continue };
            tiled += k.has_tile() as usize;
            wide_tiled += (wide && row.avx512_tile.is_some()) as usize;
            for nrows in [1, 2, 3, 5] {
                for gap in [0, 7] {
                    let stride = row_bytes + gap;
                    let mut w = vec![0u8; stride * nrows];
                    for r in 0..nrows {
                        w[r * stride..r * stride + row_bytes].copy_from_slice(&random_blocks(&mut rng, row.weight, n));
                    }
                    for mx in 1..=TILE_X {
                        let mut outs: Vec<Vec<f32>> = vec![vec![f32::NAN; nrows]; mx];
                        let x_refs: Vec<&[u8]> = xs[..mx].iter().map(Vec::as_slice).collect();
                        let mut o_refs: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
                        k.tile(n, &w, stride, &x_refs, &mut o_refs).unwrap();
                        for (j, out) in outs.iter().enumerate() {
                            for (r, &got) in out.iter().enumerate() {
                                let wr = &w[r * stride..r * stride + row_bytes];
                                let want = scalar.dot(n, wr, &xs[j]).unwrap();
                                let (abs_sum, _) = exact_f64(row.weight, wr, &xs[j]).unwrap();
                                let tol = if row.act == ActFormat::F32 { DOT_FLOAT } else { DOT_QUANTIZED };
                                tol.check(got, want, abs_sum as f32).unwrap_or_else(|e| panic!("{isa} (avx512 {wide}) tile {} n={n} mx={mx} nrows={nrows} gap={gap} ({j}, {r}): {e}", row.weight));
                                checked += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    if cpu::available().contains(&Isa::Avx2) {
        assert!(tiled >= 6, "only {tiled} kernels have a tile form");
    }
    if cpu::has_avx512() {
        assert!(wide_tiled >= 4, "only {wide_tiled} kernels have an AVX-512 tile form");
    }
    assert!(checked >= table().len() * 200, "{checked}");
    // Wrong shapes are refused, not run.
    let k = kernel(Isa::Scalar, smelt_formats::GgmlType::Q4_0).unwrap();
    let x = vec![0u8; 40 * 3];
    let w = vec![0u8; 18 * 3];
    let mut a = vec![0.0f32; 1];
    let mut b = vec![0.0f32; 2];
    assert!(k.tile(96, &w, 54, &[&x, &x], &mut [&mut a, &mut b]).is_err());
    assert!(k.tile(96, &w, 54, &[], &mut []).is_err());
    assert!(k.tile(96, &w, 54, &[&x[..40]], &mut [&mut a]).is_err());
}

#[test]
fn simd_dequantizers_equal_the_reference_bit_for_bit() {
    let mut rng = Rng(0x0DE9_0A47);
    let mut checked = 0;
    for ty in smelt_formats::REGISTRY.iter().map(|t| t.ty).filter(|t| t.can_dequantize()) {
        for &isa in cpu::available() {
            let Some(f) = smelt_kernels::dequant::kernel(isa, ty) else { continue };
            for n in weight_sizes(ty).into_iter().filter(|n| n % ty.block_elems() == 0) {
                let mut cases = vec![];
                if !scale_fields(ty).is_empty() || ty.block_elems() == 1 {
                    cases.push(random_blocks(&mut rng, ty, n));
                }
                if ty.can_quantize() {
                    cases.push(quantize_to_vec(ty, &rng.signal(n, 0.05)).unwrap());
                }
                for w in cases {
                    let want = smelt_formats::quant::dequantize_to_vec(ty, &w).unwrap();
                    let mut got = vec![f32::NAN; n];
                    // SAFETY: whole blocks, matching lengths, ISA detected.
                    unsafe { f(&w, &mut got) };
                    let same = want.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{isa} dequantize {ty} n={n} differs from the reference");
                    checked += 1;
                }
            }
        }
    }
    // Where a SIMD level has dequantizers (AVX2 today), the common types must all have been seen.
    let with_kernels = cpu::available().iter().any(|&isa| smelt_kernels::dequant::kernel(isa, GgmlType::Q4_0).is_some());
    if with_kernels {
        assert!(checked >= 40, "{checked}");
    }
}

#[test]
fn every_simd_isa_covers_every_table_row() {
    for &isa in cpu::available().iter().skip(1) {
        for row in table() {
            assert!(kernel(isa, row.weight).is_some(), "{isa} has no kernel for {}", row.weight);
        }
    }
}

#[test]
fn lengths_are_checked() {
    let k = kernel(Isa::Scalar, GgmlType::Q4_0).unwrap();
    assert!(k.dot(33, &[0; 36], &[0; 68]).is_err());
    assert!(k.dot(64, &[0; 35], &[0; 68]).is_err());
    assert!(k.dot(64, &[0; 36], &[0; 67]).is_err());
}

/// The AVX-512 row kernels form each row's sum exactly as the AVX-512 tiles do, so a row gets the
/// same bits alone (one sequence decoding) as beside up to seven others (a batch): checked bit
/// for bit, with even and odd block counts and every position in the tile.
#[test]
fn avx512_rows_equal_their_tile_bit_for_bit() {
    if !cpu::has_avx512() {
        return;
    }
    let mut rng = Rng(0x5EED_0512);
    let mut checked = 0;
    for row in table().iter().filter(|r| r.avx512_rows.is_some()) {
        let k = kernel_at(Isa::Avx2, row.weight, true).unwrap();
        for n in [96, 576] {
            let nrows = 7;
            let row_bytes = n / 32 * row.weight.block_bytes();
            let w: Vec<u8> = (0..nrows).flat_map(|_| random_blocks(&mut rng, row.weight, n)).collect();
            let xs: Vec<Vec<u8>> = (0..8)
                .map(|_| {
                    let mut x = Vec::new();
                    convert_rows(row.act, &rng.signal(n, 3.0), n, &mut x).unwrap();
                    x
                })
                .collect();
            for mx in 1..=8 {
                let x_refs: Vec<&[u8]> = xs[..mx].iter().map(Vec::as_slice).collect();
                let mut outs = vec![vec![0.0f32; nrows]; mx];
                let mut o_refs: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
                k.tile(n, &w, row_bytes, &x_refs, &mut o_refs).unwrap();
                for (j, tiled) in outs.iter().enumerate() {
                    let mut alone = vec![0.0f32; nrows];
                    k.rows(n, &w, row_bytes, &xs[j], &mut alone).unwrap();
                    for (a, t) in alone.iter().zip(tiled) {
                        assert_eq!(a.to_bits(), t.to_bits(), "{} n={n} mx={mx} j={j}: {a} alone, {t} in the tile", row.weight);
                        checked += 1;
                    }
                }
            }
        }
    }
    assert!(checked >= 4 * 2 * 36 * 7, "{checked}");
}
