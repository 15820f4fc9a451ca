//! Terminal table, CSV and Markdown renderings of a record.

use super::{cell, columns, context_lines};
use crate::record::Record;

/// Name and type first, then the numeric cells.
fn rows(record: &Record) -> (Vec<String>, Vec<Vec<String>>) {
    let cols = columns(record);
    let r = record.reference();
    let mut header = vec!["model".to_string(), "type".to_string()];
    header.extend(cols.iter().map(|c| c.header.clone()));
    let body = record
        .models
        .iter()
        .map(|m| {
            let name = if m.reference { format!("{} (reference)", m.name) } else { m.name.clone() };
            let mut row = vec![name, m.weight_type.clone()];
            row.extend(cols.iter().map(|c| cell(c, m, r)));
            row
        })
        .collect();
    (header, body)
}

/// An aligned plain-text table (numbers right-aligned), the context lines and the
/// recommendation.
pub fn table(record: &Record) -> String {
    let (header, body) = rows(record);
    let widths: Vec<usize> = (0..header.len()).map(|i| body.iter().map(|r| r[i].chars().count()).chain([header[i].chars().count()]).max().unwrap_or(0)).collect();
    let line = |cells: &[String]| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| if i < 2 { format!("{c:<w$}", w = widths[i]) } else { format!("{c:>w$}", w = widths[i]) })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = format!("{}\n", record.title);
    out += &line(&header);
    out.push('\n');
    out += &widths.iter().map(|&w| "-".repeat(w)).collect::<Vec<_>>().join("  ");
    out.push('\n');
    for r in &body {
        out += &line(r);
        out.push('\n');
    }
    for l in context_lines(record) {
        out += &format!("  {l}\n");
    }
    if let Some(rec) = &record.recommendation {
        out += &format!("recommendation: {rec}\n");
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// RFC 4180 CSV: one row per model, full precision, empty cells where a value is missing.
pub fn csv(record: &Record) -> String {
    let cols = columns(record);
    let r = record.reference();
    let mut head = vec!["model".to_string(), "type".into(), "reference".into(), "path".into()];
    head.extend(cols.iter().map(|c| c.header.clone()));
    let mut out = head.iter().map(|h| csv_field(h)).collect::<Vec<_>>().join(",") + "\r\n";
    for m in &record.models {
        let mut row = vec![csv_field(&m.name), csv_field(&m.weight_type), m.reference.to_string(), csv_field(&m.path)];
        row.extend(cols.iter().map(|c| (c.get)(m, r).filter(|v| v.is_finite()).map(|v| v.to_string()).unwrap_or_default()));
        out += &row.join(",");
        out += "\r\n";
    }
    out
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// A Markdown section: title, context, table, recommendation.
pub fn markdown(record: &Record) -> String {
    let (header, body) = rows(record);
    let mut out = format!("## {}\n\n", md_escape(&record.title));
    for l in context_lines(record) {
        out += &format!("- {}\n", md_escape(&l));
    }
    out += "\n| ";
    out += &header.iter().map(|h| md_escape(h)).collect::<Vec<_>>().join(" | ");
    out += " |\n|";
    out += &header.iter().enumerate().map(|(i, _)| if i < 2 { "---" } else { "---:" }).collect::<Vec<_>>().join("|");
    out += "|\n";
    for r in &body {
        out += "| ";
        out += &r.iter().map(|c| md_escape(c)).collect::<Vec<_>>().join(" | ");
        out += " |\n";
    }
    if let Some(rec) = &record.recommendation {
        out += &format!("\n**Recommendation:** {}\n", md_escape(rec));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_it() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
    }
}
