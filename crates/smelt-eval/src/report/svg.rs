//! Plain SVG charts for the HTML report: a labelled scatter plot (with an optional front drawn
//! through some of its points) and a horizontal bar chart. Linear axes with "nice" ticks
//! (1, 2, 5 x 10^k steps). No scripts, no external resources.

use std::fmt::Write;

const W: f64 = 560.0;
const H: f64 = 360.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 36.0;
const BOTTOM: f64 = 50.0;

/// Escapes text for XML content and attributes.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// Tick positions covering `[lo, hi]` with about `n` steps of 1, 2 or 5 x 10^k.
pub fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return vec![lo];
    }
    let raw = (hi - lo) / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|&s| s >= raw).unwrap_or(10.0 * mag);
    let start = (lo / step).floor() * step;
    let mut out = Vec::new();
    let mut v = start;
    while v <= hi + step * 0.5 && out.len() < 50 {
        out.push(if v.abs() < step * 1e-9 { 0.0 } else { v });
        v += step;
    }
    out
}

fn fmt_tick(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 || a == 0.0 || (a >= 1.0 && v.fract() == 0.0) {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// One point of a scatter plot.
pub struct Point {
    pub label: String,
    pub x: f64,
    pub y: f64,
    /// Drawn filled (e.g. the recommended model).
    pub highlight: bool,
}

fn frame(out: &mut String, title: &str, x_label: &str, y_label: &str) {
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{t}"><rect width="{W}" height="{H}" fill="white"/><text x="{cx}" y="20" text-anchor="middle" font-size="14" font-weight="bold">{t}</text><text x="{cx}" y="{xl}" text-anchor="middle" font-size="12">{x}</text><text transform="translate(16 {cy}) rotate(-90)" text-anchor="middle" font-size="12">{y}</text>"#,
        t = esc(title),
        cx = LEFT + (W - LEFT - RIGHT) / 2.0,
        xl = H - 10.0,
        cy = TOP + (H - TOP - BOTTOM) / 2.0,
        x = esc(x_label),
        y = esc(y_label),
    );
}

fn range(vals: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let lo = vals.clone().fold(f64::INFINITY, f64::min);
    let hi = vals.fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = if hi > lo { 0.08 * (hi - lo) } else { lo.abs().max(1.0) * 0.1 };
    (lo - pad, hi + pad)
}

/// Decade ticks (with 2x and 5x when the range spans under two decades) for a log axis, as
/// log10 values.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let (a, b) = (lo.floor() as i32, hi.ceil() as i32);
    let mults: &[f64] = if hi - lo < 2.0 { &[1.0, 2.0, 5.0] } else { &[1.0] };
    (a..=b).flat_map(|k| mults.iter().map(move |m| (m * 10f64.powi(k)).log10())).filter(|t| *t >= lo && *t <= hi).collect()
}

/// The plot frame, and the x and y ticks with grid lines, for data ranges `x` and `y` (`y` in
/// log10 units when `log_y`).
fn axes(out: &mut String, (x0, x1): (f64, f64), (y0, y1): (f64, f64), log_y: bool) {
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| TOP + ph - (y - y0) / (y1 - y0) * ph;
    let _ = write!(out, r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>"##);
    for t in ticks(x0, x1, 6).into_iter().filter(|t| *t >= x0 && *t <= x1) {
        let x = sx(t);
        let _ = write!(out, r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{b}" stroke="#eee"/><text x="{x:.1}" y="{ty}" text-anchor="middle" font-size="11">{l}</text>"##, b = TOP + ph, ty = TOP + ph + 16.0, l = fmt_tick(t));
    }
    let yt = if log_y { log_ticks(y0, y1) } else { ticks(y0, y1, 5).into_iter().filter(|t| *t >= y0 && *t <= y1).collect() };
    for t in yt {
        let y = sy(t);
        let _ = write!(out, r##"<line x1="{LEFT}" y1="{y:.1}" x2="{r}" y2="{y:.1}" stroke="#eee"/><text x="{tx}" y="{ty:.1}" text-anchor="end" font-size="11">{l}</text>"##, r = LEFT + pw, tx = LEFT - 6.0, ty = y + 4.0, l = fmt_tick(if log_y { 10f64.powf(t) } else { t }));
    }
}

/// A scatter plot; `front` (indices into `points`, in drawing order) is joined by a line.
/// With `log_y`, y is drawn on a log10 scale (points with y <= 0 are left out).
pub fn scatter(title: &str, x_label: &str, y_label: &str, points: &[Point], front: &[usize], log_y: bool) -> String {
    let mut out = String::new();
    frame(&mut out, title, x_label, y_label);
    let ty = |y: f64| if log_y { y.log10() } else { y };
    let points: Vec<Point> = points.iter().filter(|p| !log_y || p.y > 0.0).map(|p| Point { label: p.label.clone(), x: p.x, y: p.y, highlight: p.highlight }).collect();
    let (x0, x1) = range(points.iter().map(|p| p.x));
    let (y0, y1) = range(points.iter().map(|p| ty(p.y)));
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| TOP + ph - (y - y0) / (y1 - y0) * ph;
    axes(&mut out, (x0, x1), (y0, y1), log_y);
    if front.len() > 1 {
        let pts: Vec<String> = front.iter().filter_map(|&i| points.get(i)).map(|p| format!("{:.1},{:.1}", sx(p.x), sy(ty(p.y)))).collect();
        let _ = write!(out, r##"<polyline class="front" points="{}" fill="none" stroke="#d62728" stroke-width="1.5" stroke-dasharray="5 3"/>"##, pts.join(" "));
    }
    for p in &points {
        let (x, y) = (sx(p.x), sy(ty(p.y)));
        let fill = if p.highlight { "#1f77b4" } else { "white" };
        let _ = write!(out, r##"<circle class="point" cx="{x:.1}" cy="{y:.1}" r="5" fill="{fill}" stroke="#1f77b4" stroke-width="2"><title>{l}: {xv}, {yv}</title></circle><text x="{tx:.1}" y="{ty:.1}" font-size="11">{l}</text>"##, l = esc(&p.label), xv = fmt_tick(p.x), yv = fmt_tick(p.y), tx = x + 7.0, ty = y - 6.0);
    }
    out.push_str("</svg>");
    out
}

/// Line series of `(x, y)` points, one colour each with a legend (training curves); with
/// `log_y`, y on a log10 scale (points with y <= 0 left out).
pub fn lines(title: &str, x_label: &str, y_label: &str, series: &[(String, Vec<(f64, f64)>)], log_y: bool) -> String {
    const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
    let mut out = String::new();
    frame(&mut out, title, x_label, y_label);
    let ty = |y: f64| if log_y { y.log10() } else { y };
    let kept: Vec<Vec<(f64, f64)>> = series.iter().map(|(_, pts)| pts.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite() && (!log_y || *y > 0.0)).collect()).collect();
    let all = || kept.iter().flatten();
    let (x0, x1) = range(all().map(|p| p.0));
    let (y0, y1) = range(all().map(|p| ty(p.1)));
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| TOP + ph - (y - y0) / (y1 - y0) * ph;
    axes(&mut out, (x0, x1), (y0, y1), log_y);
    for (k, ((label, _), pts)) in series.iter().zip(&kept).enumerate() {
        let c = COLOURS[k % COLOURS.len()];
        let path: Vec<String> = pts.iter().map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(ty(*y)))).collect();
        let _ = write!(out, r##"<polyline class="series" points="{}" fill="none" stroke="{c}" stroke-width="1.5"/>"##, path.join(" "));
        let ly = TOP + 14.0 + 16.0 * k as f64;
        let _ = write!(out, r##"<line x1="{a:.1}" y1="{y:.1}" x2="{b:.1}" y2="{y:.1}" stroke="{c}" stroke-width="2"/><text x="{tx:.1}" y="{t:.1}" font-size="11">{l}</text>"##, a = W - RIGHT - 150.0, b = W - RIGHT - 130.0, y = ly, tx = W - RIGHT - 125.0, t = ly + 4.0, l = esc(label));
    }
    out.push_str("</svg>");
    out
}

/// A horizontal bar chart of `(label, value)`.
pub fn bars(title: &str, x_label: &str, items: &[(String, f64)]) -> String {
    let mut out = String::new();
    frame(&mut out, title, x_label, "");
    let hi = items.iter().map(|i| i.1).fold(0.0, f64::max).max(1e-12);
    let (pw, ph) = (W - LEFT - RIGHT - 40.0, H - TOP - BOTTOM);
    let bh = (ph / items.len().max(1) as f64).min(28.0);
    for (k, (label, v)) in items.iter().enumerate() {
        let y = TOP + k as f64 * bh;
        let w = (v / hi * pw).max(0.0);
        let _ = write!(out, r##"<text x="{tx}" y="{ty:.1}" text-anchor="end" font-size="11">{l}</text><rect class="bar" x="{LEFT}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="#2ca02c"/><text x="{vx:.1}" y="{ty:.1}" font-size="11">{v}</text>"##, tx = LEFT - 6.0, ty = y + bh * 0.6, l = esc(label), h = bh * 0.75, vx = LEFT + w + 4.0, v = fmt_tick(*v));
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_charts_draw_every_series_with_a_legend() {
        let train: Vec<(f64, f64)> = (1..=50).map(|s| (s as f64, 1.0 / s as f64)).collect();
        let svg = lines("loss", "step", "loss", &[("train".into(), train), ("validation <gap>".into(), vec![(10.0, 0.2), (50.0, f64::NAN), (50.0, 0.05)])], true);
        assert_eq!(svg.matches("class=\"series\"").count(), 2);
        assert!(svg.contains("validation &lt;gap&gt;") && svg.ends_with("</svg>") && !svg.contains("NaN"));
        let first = svg.split("class=\"series\" points=\"").nth(1).unwrap().split('"').next().unwrap();
        assert_eq!(first.split(' ').count(), 50);
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 10.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = ticks(13.2, 97.5, 6);
        assert!(t[0] <= 13.2 && *t.last().unwrap() >= 97.5 - 10.0);
        assert!(t.windows(2).all(|w| ((w[1] - w[0]) - 20.0).abs() < 1e-9), "{t:?}");
    }

    #[test]
    fn log_ticks_fall_on_decades() {
        let t: Vec<f64> = log_ticks(-3.2, 0.4).into_iter().map(|v| 10f64.powf(v)).collect();
        let want = [1e-3, 1e-2, 1e-1, 1.0];
        assert_eq!(t.len(), want.len(), "{t:?}");
        assert!(t.iter().zip(want).all(|(a, b)| (a / b - 1.0).abs() < 1e-9));
    }

    #[test]
    fn labels_are_escaped() {
        let s = scatter("a<b", "x", "y", &[Point { label: "<script>".into(), x: 1.0, y: 2.0, highlight: true }], &[], false);
        assert!(!s.contains("<script>"));
        assert!(s.contains("&lt;script&gt;"));
    }
}
