//! A self-contained HTML report: title, setup, recommendation, the table, and plots (quality
//! loss vs size with the Pareto front, quality loss vs speed, energy per token or text). The
//! record itself is embedded as JSON (`<script type="application/json" id="smelt-record">`),
//! so the page is also a machine-readable file. No scripts run and nothing is fetched.

use std::fmt::Write;

use super::svg::{bars, esc, lines, scatter, Point};
use super::{cell, columns, context_lines};
use crate::record::{pareto, Record};

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}\
table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ccc;padding:4px 8px}\
td.n{text-align:right;font-variant-numeric:tabular-nums}tr.ref{background:#f4f4f4}tr.best{background:#e6f2ff}\
.plots{display:flex;flex-wrap:wrap;gap:16px;margin-top:1em}.rec{font-size:1.1em;padding:.6em;background:#e6f2ff;border-left:4px solid #1f77b4}\
ul.ctx{font-size:13px;color:#555}div.wide{overflow-x:auto}";

/// The whole page.
pub fn html(record: &Record) -> String {
    let r = record.reference();
    let cols = columns(record);
    let best = record.recommended;
    let mut out = String::new();
    let _ = write!(out, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title><style>{STYLE}</style></head><body><h1>{t}</h1>", t = esc(&record.title));
    if let Some(rec) = &record.recommendation {
        let _ = write!(out, "<p class=\"rec\"><b>Recommendation:</b> {}</p>", esc(rec));
    }
    out.push_str("<ul class=\"ctx\">");
    for l in context_lines(record) {
        let _ = write!(out, "<li>{}</li>", esc(&l));
    }
    out.push_str("</ul><div class=\"wide\"><table><thead><tr><th>model</th><th>type</th>");
    for c in &cols {
        let _ = write!(out, "<th>{}</th>", esc(&c.header));
    }
    out.push_str("</tr></thead><tbody>");
    for (i, m) in record.models.iter().enumerate() {
        let class = if m.reference { " class=\"ref\"" } else if Some(i) == best { " class=\"best\"" } else { "" };
        let name = if m.reference { format!("{} (reference)", m.name) } else { m.name.clone() };
        let _ = write!(out, "<tr{class}><td>{}</td><td>{}</td>", esc(&name), esc(&m.weight_type));
        for c in &cols {
            let _ = write!(out, "<td class=\"n\">{}</td>", cell(c, m, r));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div><div class=\"plots\">");
    for svg in plots(record, best) {
        let _ = write!(out, "<figure>{svg}</figure>");
    }
    out.push_str("</div>");
    // The record, for machines; `</` cannot end the script early once escaped.
    let json = serde_json::to_string(record).unwrap_or_default().replace("</", "<\\/");
    let _ = writeln!(out, "<script type=\"application/json\" id=\"smelt-record\">{json}</script></body></html>");
    out
}

/// The quality axis of the plots: mean KL divergence to the reference for decoders, `1 - mean
/// cosine` for encoders (both 0 for the reference itself, so it is left out of the log plots).
fn divergence(m: &crate::record::ModelResult) -> Option<(f64, &'static str)> {
    if let Some(v) = m.lm.as_ref().and_then(|q| q.vs_ref.as_ref()) {
        return Some((v.kld_mean, "mean KL divergence to the original (log)"));
    }
    m.encoder.as_ref()?.cosine.as_ref().map(|c| (1.0 - c.mean, "1 - mean cosine to the original (log)"))
}

/// The plots that the record has data for.
fn plots(record: &Record, best: Option<usize>) -> Vec<String> {
    let mut out = Vec::new();
    let decoder = record.models.iter().any(|m| m.kind == "decoder");
    let idx: Vec<usize> = (0..record.models.len()).filter(|&i| !record.models[i].reference && divergence(&record.models[i]).is_some_and(|d| d.0 > 0.0)).collect();
    let label = idx.first().and_then(|&i| divergence(&record.models[i])).map(|d| d.1).unwrap_or("");
    let point = |i: usize, x: f64| divergence(&record.models[i]).map(|(y, _)| Point { label: record.models[i].name.clone(), x, y, highlight: Some(i) == best });
    if idx.len() > 1 {
        let pts: Vec<Point> = idx.iter().filter_map(|&i| point(i, record.models[i].size() as f64 / 1e6)).collect();
        let front = pareto(&pts.iter().map(|p| (p.x, p.y)).collect::<Vec<_>>());
        out.push(scatter("Quality vs size (dashed: Pareto front)", "size (MB)", label, &pts, &front, true));
    }
    let speed = |i: usize| {
        let m = &record.models[i];
        m.decoder_speed.as_ref().map(|s| s.decode_tps).or(m.encoder_speed.as_ref().map(|s| s.throughput))
    };
    let sp: Vec<Point> = idx.iter().filter_map(|&i| speed(i).and_then(|x| point(i, x))).collect();
    if sp.len() > 1 {
        let x = if decoder { "decode tokens/s" } else { "texts/s (batched)" };
        let front = pareto(&sp.iter().map(|p| (-p.x, p.y)).collect::<Vec<_>>());
        out.push(scatter("Quality vs speed (dashed: Pareto front)", x, label, &sp, &front, true));
    }
    let energy: Vec<(String, f64)> = record
        .models
        .iter()
        .filter_map(|m| m.decoder_speed.as_ref().map(|s| 1e3 * s.joules_per_token).or(m.encoder_speed.as_ref().map(|s| 1e3 * s.joules_per_text)).map(|e| (m.name.clone(), e)))
        .collect();
    if !energy.is_empty() {
        let method = record.models.iter().find_map(|m| m.decoder_speed.as_ref().map(|s| s.energy.method.clone()).or(m.encoder_speed.as_ref().map(|s| s.energy.method.clone()))).unwrap_or_default();
        let unit = if decoder { "mJ per generated token" } else { "mJ per text" };
        out.push(bars(&format!("Energy ({method})"), unit, &energy));
    }
    out
}

/// A training run's page: the settings and results as a table of `(name, value)` rows, and the
/// loss curves (training loss per step, validation loss per evaluation) on a log scale.
pub fn training_html(title: &str, rows: &[(String, String)], train: &[(f64, f64)], val: &[(f64, f64)]) -> String {
    let mut series = vec![("training loss".to_string(), train.to_vec())];
    if !val.is_empty() {
        series.push(("validation loss".to_string(), val.to_vec()));
    }
    curves_html(title, rows, &[Plot { title: "Loss", x_label: "step", y_label: "loss", series, log_y: true }])
}

/// One line plot of a page: named series of `(x, y)` points.
pub struct Plot<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub series: Vec<(String, Vec<(f64, f64)>)>,
    pub log_y: bool,
}

/// A page of a table of `(name, value)` rows and line plots (training runs, federated
/// simulations).
pub fn curves_html(title: &str, rows: &[(String, String)], plots: &[Plot]) -> String {
    let mut out = String::new();
    let _ = write!(out, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title><style>{STYLE}</style></head><body><h1>{t}</h1><table><tbody>", t = esc(title));
    for (k, v) in rows {
        let _ = write!(out, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v));
    }
    out.push_str("</tbody></table><div class=\"plots\">");
    for p in plots {
        out.push_str(&lines(p.title, p.x_label, p.y_label, &p.series, p.log_y));
    }
    out.push_str("</div></body></html>\n");
    out
}
