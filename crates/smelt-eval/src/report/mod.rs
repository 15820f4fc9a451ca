//! Reports rendered from one [`Record`]: the columns are chosen once here (a column appears
//! when at least one model has a value for it) and every format prints the same ones.

mod html;
mod svg;
mod text;

pub use html::{curves_html, html, training_html, Plot};
pub use text::{csv, markdown, table};

use crate::record::{ModelResult, Record};

/// Reads a column's value from a model (and the reference, for relative columns).
pub type Getter = Box<dyn Fn(&ModelResult, Option<&ModelResult>) -> Option<f64>>;

/// One column: header (with unit), decimals, and how to read the value.
pub struct Column {
    pub header: String,
    pub digits: usize,
    pub get: Getter,
}

fn col(header: &str, digits: usize, get: impl Fn(&ModelResult, Option<&ModelResult>) -> Option<f64> + 'static) -> Column {
    Column { header: header.into(), digits, get: Box::new(get) }
}

/// The numeric columns of `record` that at least one model fills.
pub fn columns(record: &Record) -> Vec<Column> {
    let mut all = vec![
        col("size MB", 1, |m, _| Some(m.size() as f64 / 1e6)),
        col("bits/weight", 2, |m, _| (m.bits_per_weight > 0.0).then_some(m.bits_per_weight)),
        col("params M", 2, |m, _| (m.params > 0).then_some(m.params as f64 / 1e6)),
        col("params kept %", 1, |m, r| r.filter(|r| r.params > 0 && m.params > 0).map(|r| 100.0 * m.params as f64 / r.params as f64)),
        // Exact zeros of the block matrices: pruning's, and the rounding of coarse grids (Q4_0
        // puts about 12% of SmolLM2's weights on 0); shown from 1%.
        col("zero weights %", 1, |m, _| m.zero_fraction.filter(|&z| z >= 0.01).map(|z| 100.0 * z)),
        col("loss %", 2, |m, r| m.quality_loss_pct(r)),
        // Decoders.
        col("PPL", 3, |m, _| m.lm.as_ref().map(|q| q.ppl)),
        col("PPL +-", 3, |m, _| m.lm.as_ref().map(|q| q.ppl_stderr)),
        col("KLD mean", 5, |m, _| m.lm.as_ref()?.vs_ref.as_ref().map(|v| v.kld_mean)),
        col("KLD p50", 5, |m, _| m.lm.as_ref()?.vs_ref.as_ref().map(|v| v.kld.p50)),
        col("KLD p99", 4, |m, _| m.lm.as_ref()?.vs_ref.as_ref().map(|v| v.kld.p99)),
        col("KLD max", 3, |m, _| m.lm.as_ref()?.vs_ref.as_ref().map(|v| v.kld.max)),
        col("same top %", 2, |m, _| m.lm.as_ref()?.vs_ref.as_ref().map(|v| 100.0 * v.same_top)),
        col("RMS dp %", 3, |m, _| m.lm.as_ref()?.vs_ref.as_ref().map(|v| 100.0 * v.dp_rms)),
        col("prefill t/s", 1, |m, _| m.decoder_speed.as_ref().map(|s| s.prefill_tps)),
        col("decode t/s", 1, |m, _| m.decoder_speed.as_ref().map(|s| s.decode_tps)),
        col("TTFT p50 ms", 1, |m, _| m.decoder_speed.as_ref().map(|s| s.ttft_ms.p50)),
        col("token p50 ms", 2, |m, _| m.decoder_speed.as_ref().map(|s| s.token_ms.p50)),
        col("token p95 ms", 2, |m, _| m.decoder_speed.as_ref().map(|s| s.token_ms.p95)),
        col("token p99 ms", 2, |m, _| m.decoder_speed.as_ref().map(|s| s.token_ms.p99)),
        col("mJ/token", 1, |m, _| m.decoder_speed.as_ref().map(|s| 1e3 * s.joules_per_token)),
        // Encoders.
        col("cos mean", 5, |m, _| m.encoder.as_ref()?.cosine.as_ref().map(|c| c.mean)),
        col("cos min", 4, |m, _| m.encoder.as_ref()?.cosine.as_ref().map(|c| c.min)),
        col("cos p1", 4, |m, _| m.encoder.as_ref()?.cosine.as_ref().map(|c| c.p99)),
        col("STS Spearman", 4, |m, _| m.encoder.as_ref()?.sts.as_ref().map(|s| s.spearman)),
        col("retrieval overlap", 3, |m, _| m.encoder.as_ref()?.retrieval.as_ref().map(|r| r.overlap)),
        col("retrieval top1", 3, |m, _| m.encoder.as_ref()?.retrieval.as_ref().map(|r| r.top1)),
        col("text p50 ms", 2, |m, _| m.encoder_speed.as_ref().map(|s| s.request_ms.p50)),
        col("text p95 ms", 2, |m, _| m.encoder_speed.as_ref().map(|s| s.request_ms.p95)),
        col("texts/s", 1, |m, _| m.encoder_speed.as_ref().map(|s| s.throughput)),
        col("mJ/text", 2, |m, _| m.encoder_speed.as_ref().map(|s| 1e3 * s.joules_per_text)),
    ];
    // Classification: one pair of columns per task.
    let tasks: Vec<String> = record.models.iter().flat_map(|m| m.encoder.iter().flat_map(|e| e.classification.iter().map(|t| t.name.clone()))).fold(Vec::new(), |mut v, n| {
        if !v.contains(&n) {
            v.push(n);
        }
        v
    });
    for t in tasks {
        let t2 = t.clone();
        let find = move |m: &ModelResult, name: &str| m.encoder.as_ref().and_then(|e| e.classification.iter().find(|c| c.name == name).cloned());
        let f2 = find;
        all.push(col(&format!("{t} acc fixed"), 4, move |m, _| find(m, &t).map(|c| if m.reference { c.reference.accuracy } else { c.fixed.accuracy })));
        all.push(col(&format!("{t2} F1 refit"), 4, move |m, _| f2(m, &t2).map(|c| c.refit.macro_f1)));
    }
    all.push(col("peak RSS MiB", 0, |m, _| m.peak_rss.map(|b| b as f64 / (1 << 20) as f64)));
    let r = record.reference();
    all.into_iter().filter(|c| record.models.iter().any(|m| (c.get)(m, r).is_some_and(f64::is_finite))).collect()
}

/// The value of `c` for `m` formatted, `-` when missing.
pub fn cell(c: &Column, m: &ModelResult, r: Option<&ModelResult>) -> String {
    match (c.get)(m, r) {
        Some(v) if v.is_finite() => {
            let s = format!("{v:.*}", c.digits);
            // No "-0.00": a value that rounds to zero prints as zero.
            if s.starts_with('-') && s[1..].chars().all(|ch| ch == '0' || ch == '.') {
                s[1..].to_string()
            } else {
                s
            }
        }
        _ => "-".into(),
    }
}

/// Lines that say what was measured and how (shared by every format).
pub fn context_lines(record: &Record) -> Vec<String> {
    let mut out = vec![format!("machine: {} ({} threads, {} {})", record.machine.cpu, record.machine.threads, record.machine.os, record.machine.arch)];
    out.extend(record.data.iter().cloned());
    if let Some(e) = record.models.iter().find_map(|m| m.decoder_speed.as_ref().map(|s| &s.energy).or(m.encoder_speed.as_ref().map(|s| &s.energy))) {
        out.push(format!("energy: {} ({}); carbon at {} gCO2e/kWh ({})", e.method, e.note, record.energy.grid_g_per_kwh, record.energy.grid_source));
    }
    out.extend(record.notes.iter().cloned());
    out
}
