//! `smelt route label|eval`: the router measured on a labelled task (the work is in
//! `smelt_serve::route_eval`), and `smelt monitor` over a request log (`smelt_serve::monitor`);
//! this file reads arguments and prints.

use std::io::Write;
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use smelt_serve::route_eval::{self, CollectOptions, Record, Report, Thresholds};
use smelt_serve::router::Complexity;

use crate::cli::{Global, MonitorArgs, RouteArgs, RouteAsk, RouteCommand};
use crate::progress::Progress;

pub fn run(a: &RouteArgs, global: &Global) -> Result<()> {
    match &a.command {
        RouteCommand::Label(l) => {
            let records = records(&l.ask, global, None)?;
            let rows = route_eval::labels(&records);
            let remote = rows.iter().filter(|r| r["label"] == "remote").count();
            smelt_formats::fsutil::write_atomic_io(&l.output, |w| rows.iter().try_for_each(|r| writeln!(w, "{r}"))).with_context(|| format!("writing {}", l.output.display()))?;
            if !global.quiet {
                eprintln!("wrote {} ({} items: {remote} labelled remote, {} local); train the head with: smelt classify train {} -o complexity.head.json", l.output.display(), rows.len(), rows.len() - remote, l.output.display());
            }
            Ok(())
        }
        RouteCommand::Eval(e) => {
            if !(0.0..=1.0).contains(&e.target) {
                bail!("--target is a share of always-remote quality, between 0 and 1 (got {})", e.target);
            }
            let head = e.ask.complexity.as_ref().map(|p| smelt_serve::run::read_head(p).map_err(anyhow::Error::from).and_then(|h| Complexity::new(h, e.complexity_threshold).map_err(anyhow::Error::msg))).transpose()?;
            let has_head = head.is_some();
            let records = records(&e.ask, global, head)?;
            if records.iter().any(|r| r.remote_ok.is_none()) {
                bail!("these records have no remote answers: give --remote URL");
            }
            let with_head = has_head || records.iter().all(|r| r.p_remote.is_some());
            let at = Thresholds { mean_logprob: e.confidence_logprob, min_top1: e.confidence_top1, p_remote: with_head.then_some(e.complexity_threshold), draft: e.ask.confidence_tokens.max(1) };
            let report = route_eval::analyse(&records, e.target, at);
            if let Some(p) = &e.plot {
                let title = format!("Router cost-quality, {} items", report.items);
                smelt_formats::fsutil::write_atomic_io(p, |w| w.write_all(route_eval::plot(&report, &title).as_bytes())).with_context(|| format!("writing {}", p.display()))?;
            }
            if e.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_report(&report, &records);
            }
            Ok(())
        }
    }
}

/// The records: read back (--from) or asked of the servers (and saved with --records).
fn records(a: &RouteAsk, global: &Global, complexity: Option<Complexity>) -> Result<Vec<Record>> {
    if let Some(from) = &a.from {
        let text = std::fs::read_to_string(from).with_context(|| format!("reading {}", from.display()))?;
        return text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{} line {}: not a route record", from.display(), i + 1))).collect();
    }
    let Some(data) = &a.data else { bail!("give a task file, or --from RECORDS") };
    let items = route_eval::read_items(data)?;
    let complexity = match complexity {
        Some(c) => Some(c),
        None => a.complexity.as_ref().map(|p| smelt_serve::run::read_head(p).map_err(anyhow::Error::from).and_then(|h| Complexity::new(h, 0.5).map_err(anyhow::Error::msg))).transpose()?,
    };
    let opts = CollectOptions { local: a.local.clone(), remote: a.remote.clone(), complexity, max_tokens: a.max_tokens.max(1), concurrency: a.concurrency };
    let bar = Mutex::new(Progress::new("asking", items.len() as u64, false, global.quiet));
    let records = route_eval::collect_blocking(&items, &opts, &|| bar.lock().unwrap_or_else(|p| p.into_inner()).inc(1, ""))?;
    bar.lock().unwrap_or_else(|p| p.into_inner()).finish();
    if let Some(path) = &a.records {
        smelt_formats::fsutil::write_atomic_io(path, |w| records.iter().try_for_each(|r| writeln!(w, "{}", serde_json::to_string(r).unwrap_or_default()))).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(records)
}

fn print_report(r: &Report, records: &[Record]) {
    println!("{} items: local quality {:.4}, remote quality {:.4}; target {:.0}% of remote = {:.4}", r.items, r.local_quality, r.remote_quality, r.target * 100.0, r.target * r.remote_quality);
    let agree: Vec<String> = route_eval::agreement(records).iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!("answers: {}", agree.join(", "));
    println!("oracle (escalate exactly where it helps): {:.1}% escalated, quality {:.4}", r.oracle.share * 100.0, r.oracle.quality);
    println!();
    println!("{:<24} {:>8} {:>12} {:>12} {:>22}", "signal", "area", "escalated", "quality", "threshold(s)");
    for c in &r.curves {
        let (share, q, t) = match c.chosen {
            Some(p) => (format!("{:.1}%", p.share * 100.0), format!("{:.4}", p.quality), thresholds(&p.thresholds)),
            None => ("-".into(), "-".into(), "target not reached".into()),
        };
        println!("{:<24} {:>8.4} {:>12} {:>12} {:>22}", c.signal, c.area, share, q, t);
    }
    println!();
    for c in &r.curves {
        println!("{}: {}", c.signal, c.rule);
    }
    println!();
    println!("separation (AUROC, 0.5 is chance): does the signal find the items ...");
    println!("{:<24} {:>20} {:>20}", "signal", "the local gets wrong", "escalation helps");
    let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    for s in &r.separation {
        println!("{:<24} {:>20} {:>20}", s.signal, f(s.local_wrong), f(s.escalation_helps));
    }
    let p = &r.at_point;
    let complexity = r.at.p_remote.map_or(String::new(), |t| format!(", p(remote) >= {t}"));
    println!();
    println!("at the given thresholds (draft of {} tokens: mean log-probability < {}, top-1 < {}{complexity}):\n  {:.1}% escalated, quality {:.4} ({:.1}% of remote; target {})", r.at.draft, r.at.mean_logprob, r.at.min_top1, p.share * 100.0, p.quality, 100.0 * p.quality / r.remote_quality.max(1e-12), if r.at_meets_target { "met" } else { "NOT met" });
}

fn thresholds(t: &[f64; 2]) -> String {
    if t[0].is_nan() {
        "-".into()
    } else if t[1].is_nan() {
        format!("{:.4}", t[0])
    } else {
        format!("{:.4}, {:.4}", t[0], t[1])
    }
}

pub fn monitor(a: &MonitorArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.log).with_context(|| format!("reading {}", a.log.display()))?;
    let mut lines = Vec::new();
    for (i, l) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let line: smelt_serve::monitor::LogLine = serde_json::from_str(l).with_context(|| format!("{} line {}: not a request-log line (from smelt serve --request-log)", a.log.display(), i + 1))?;
        lines.push(line);
    }
    if lines.is_empty() {
        bail!("{} holds no requests", a.log.display());
    }
    let w = smelt_serve::monitor::windows(&lines, a.window, a.low_confidence);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&w)?);
        return Ok(());
    }
    println!("{} requests in windows of {}; low confidence: mean log-probability < {}", lines.len(), a.window, a.low_confidence);
    println!("{:>8} {:>9} {:>9} {:>8} {:>8} {:>9} {:>9} {:>8}  flags", "first", "requests", "minutes", "remote", "unsure", "prompt", "p50/p99 s", "drift");
    let base = w[0].low_confidence_share;
    for x in &w {
        let mut flags = Vec::new();
        if x.drift.is_some_and(|d| d > a.drift_alert) {
            flags.push("drift");
        }
        if let (Some(b), Some(s)) = (base, x.low_confidence_share) {
            if s > b + 0.10 {
                flags.push("confidence falling");
            }
        }
        let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}%", v * 100.0));
        println!(
            "{:>8} {:>9} {:>9.1} {:>8} {:>8} {:>9.0} {:>4.2}/{:<4.2} {:>8}  {}",
            x.first,
            x.requests,
            (x.end - x.start) / 60.0,
            pct(Some(x.remote_share)),
            pct(x.low_confidence_share),
            x.mean_prompt_tokens,
            x.p50_seconds,
            x.p99_seconds,
            x.drift.map_or("-".to_string(), |d| format!("{d:.4}")),
            flags.join(", ")
        );
    }
    Ok(())
}
