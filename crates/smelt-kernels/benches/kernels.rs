//! Per-kernel throughput with operands in L1 (compute cost, not memory): every row of the
//! kernel table on every ISA level this machine has, dotting 4096 weights with 4096
//! activations. Run: `cargo bench -p smelt-kernels --bench kernels`.

use smelt_formats::quant::quantize_to_vec;
use smelt_formats::GgmlType;
use smelt_kernels::act::convert_rows;
use smelt_kernels::cpu;
use smelt_kernels::dot::{kernel, table};

const N: usize = 4096;

fn main() {
    divan::main();
}

fn signal(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.1).collect()
}

fn types() -> Vec<GgmlType> {
    table().iter().map(|r| r.weight).collect()
}

#[divan::bench(args = types())]
fn dot(bencher: divan::Bencher, ty: GgmlType) {
    let row = table().iter().find(|r| r.weight == ty).unwrap();
    let w = quantize_to_vec(ty, &signal(N)).unwrap();
    let mut x = Vec::new();
    convert_rows(row.act, &signal(N), N, &mut x).unwrap();
    let isa = std::env::var("SMELT_BENCH_ISA").ok().and_then(|s| cpu::Isa::from_name(&s)).unwrap_or_else(cpu::best);
    let k = kernel(isa, ty).or_else(|| kernel(cpu::Isa::Scalar, ty)).unwrap();
    bencher.counter(divan::counter::ItemsCount::new(N)).bench_local(|| k.dot(N, divan::black_box(&w), divan::black_box(&x)).unwrap());
}
