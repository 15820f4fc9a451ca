//! GEMV throughput per weight type on SmolLM2-135M's matrix shapes, as GB/s of weights read.
//!
//! Each configuration cycles through enough copies of its matrix to exceed 64 MiB (twice the
//! 32 MiB L3 of the reference machine), so the figure measures DRAM traffic, not cache hits.
//! Reports the median of repeated timed passes. Run:
//!
//!     cargo bench -p smelt-kernels --bench gemv_bandwidth -- [--json] [--quick] [TYPE ...]
//!
//! `SMELT_ISA=scalar` measures the scalar twins instead of the best SIMD level.

use std::time::{Duration, Instant};

use smelt_formats::quant::quantize_to_vec;
use smelt_formats::GgmlType;
use smelt_kernels::act::convert_rows;
use smelt_kernels::dot;
use smelt_kernels::matmul::{gemv_prepared, QMatrix};
use smelt_kernels::pool::ThreadPool;

/// (name, rows, cols): SmolLM2's attention (q, o), FFN up/gate, FFN down, and the tied
/// embedding used as the output head.
const SHAPES: [(&str, usize, usize); 4] = [("576x576", 576, 576), ("1536x576", 1536, 576), ("576x1536", 576, 1536), ("49152x576", 49152, 576)];
const WORKING_SET: usize = 64 << 20;

fn signal(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            ((s >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 0.05
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let json = args.iter().any(|a| a == "--json");
    let quick = args.iter().any(|a| a == "--quick");
    let mut types: Vec<GgmlType> = args.iter().filter_map(|a| GgmlType::from_name(a)).collect();
    if types.is_empty() {
        types = vec![GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::IQ4_NL, GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::F16, GgmlType::BF16, GgmlType::F32];
    }
    let budget = if quick { Duration::from_millis(150) } else { Duration::from_millis(1500) };
    let isa = smelt_kernels::cpu::best();
    if !json {
        println!("GEMV, weights streamed from DRAM (working set >= {} MiB), ISA {isa}, median of passes", WORKING_SET >> 20);
        println!("{:<7} {:<10} {:>8} {:>10} {:>10} {:>9}", "type", "shape", "threads", "GB/s", "us/gemv", "bytes");
    }
    for &ty in &types {
        let k = dot::best(ty).expect("kernel");
        for (shape, rows, cols) in SHAPES {
            if cols % ty.block_elems() != 0 {
                if !json {
                    println!("{:<7} {:<10} {:>8} {:>10}", ty.name(), shape, "-", "n/a (row not a multiple of the block)");
                }
                continue;
            }
            let one = quantize_to_vec(ty, &signal(rows * cols, rows as u32 ^ cols as u32)).unwrap();
            let copies = WORKING_SET.div_ceil(one.len()).max(2);
            let mats: Vec<Vec<u8>> = (0..copies).map(|i| { let mut m = one.clone(); m[0] ^= i as u8; m }).collect();
            let mut xa = Vec::new();
            convert_rows(k.act, &signal(cols, 7), cols, &mut xa).unwrap();
            let mut y = vec![0f32; rows];
            for threads in [1, 2] {
                let pool = ThreadPool::new(threads);
                // Warm up: touch every copy once.
                for m in &mats {
                    gemv_prepared(&pool, &k, &QMatrix::new(ty, rows, cols, m).unwrap(), &xa, &mut y).unwrap();
                }
                let mut rates = Vec::new();
                let start = Instant::now();
                let mut i = 0usize;
                while start.elapsed() < budget || rates.len() < 5 {
                    // One pass: every copy once, timed as a whole.
                    let t = Instant::now();
                    for _ in 0..copies {
                        let m = QMatrix::new(ty, rows, cols, &mats[i % copies]).unwrap();
                        gemv_prepared(&pool, &k, &m, &xa, &mut y).unwrap();
                        i += 1;
                    }
                    let secs = t.elapsed().as_secs_f64();
                    rates.push((one.len() * copies) as f64 / secs / 1e9);
                }
                let gbs = median(rates);
                let us = one.len() as f64 / (gbs * 1e9) * 1e6;
                if json {
                    println!(
                        "{{\"type\":\"{}\",\"shape\":\"{shape}\",\"rows\":{rows},\"cols\":{cols},\"threads\":{threads},\"isa\":\"{isa}\",\"gb_per_s\":{gbs:.3},\"us_per_gemv\":{us:.2},\"bytes\":{}}}",
                        ty.name(),
                        one.len()
                    );
                } else {
                    println!("{:<7} {:<10} {:>8} {:>10.2} {:>10.1} {:>9}", ty.name(), shape, threads, gbs, us, one.len());
                }
                std::hint::black_box(&y);
            }
        }
    }
}
