//! Text inputs: one text per line, or JSON lines (`"a string"`, or `{"text": ..., "id": ...}`,
//! and `{"text": ..., "label": ...}` for labelled data). Lines are numbered from 1 in errors;
//! a final newline does not make an extra text; `\r\n` endings are accepted.

use serde_json::Value;

/// One input text and the id to echo back.
#[derive(Clone, Debug, PartialEq)]
pub struct TextItem {
    pub id: Option<Value>,
    pub text: String,
}

/// One labelled example.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Labelled {
    pub text: String,
    pub label: String,
}

/// A line that is not what its format requires.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TextError {
    #[error("line {line} is not valid UTF-8 (invalid byte at column {column})")]
    Utf8 { line: usize, column: usize },
    #[error("line {line} is not valid JSON: {reason}")]
    Json { line: usize, reason: String },
    #[error("line {line}: {what}")]
    Shape { line: usize, what: &'static str },
    #[error("no examples (every line is empty)")]
    Empty,
}

fn utf8(line: &[u8], n: usize) -> Result<&str, TextError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    std::str::from_utf8(line).map_err(|e| TextError::Utf8 { line: n, column: e.valid_up_to() + 1 })
}

fn json(text: &str, n: usize) -> Result<Value, TextError> {
    serde_json::from_str(text).map_err(|e| TextError::Json { line: n, reason: e.to_string() })
}

/// Parses line `n` (1-based): the text itself, or a JSON string or object with `"text"`.
pub fn parse_line(line: &[u8], n: usize, jsonl: bool) -> Result<TextItem, TextError> {
    let text = utf8(line, n)?;
    if !jsonl {
        return Ok(TextItem { id: None, text: text.to_string() });
    }
    match json(text, n)? {
        Value::String(s) => Ok(TextItem { id: None, text: s }),
        Value::Object(mut o) => match o.remove("text") {
            Some(Value::String(s)) => Ok(TextItem { id: o.remove("id"), text: s }),
            _ => Err(TextError::Shape { line: n, what: "a JSON object needs a string field \"text\"" }),
        },
        _ => Err(TextError::Shape { line: n, what: "expected a JSON string or an object with \"text\"" }),
    }
}

/// Every line of `bytes` (an empty input holds no texts; empty lines are texts).
pub fn parse_lines(bytes: &[u8], jsonl: bool) -> Result<Vec<TextItem>, TextError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    body.split(|&b| b == b'\n').enumerate().map(|(i, l)| parse_line(l, i + 1, jsonl)).collect()
}

/// Labelled JSON lines `{"text": "...", "label": ...}` (a label may be a string, number or
/// boolean; blank lines are skipped). At least one example.
pub fn parse_labelled(bytes: &[u8]) -> Result<Vec<Labelled>, TextError> {
    let mut out = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let n = i + 1;
        let text = utf8(line, n)?;
        if text.trim().is_empty() {
            continue;
        }
        let v = json(text, n)?;
        let text = v.get("text").and_then(Value::as_str).ok_or(TextError::Shape { line: n, what: "needs a string \"text\"" })?;
        let label = match v.get("label") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(x)) => x.to_string(),
            Some(Value::Bool(b)) => b.to_string(),
            _ => return Err(TextError::Shape { line: n, what: "needs a \"label\" (string, number or boolean)" }),
        };
        out.push(Labelled { text: text.to_string(), label });
    }
    if out.is_empty() {
        return Err(TextError::Empty);
    }
    Ok(out)
}

/// Sentences of a prose text (calibration and distillation data for encoders): split after `.`, `!` or `?`, whitespace
/// collapsed, those of at least 4 words, at most `max`.
pub fn sentences(text: &str, max: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for word in text.split_whitespace() {
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(word);
        if word.ends_with(['.', '!', '?']) || word.ends_with(".\"") || word.ends_with("?\"") || word.ends_with("!\"") {
            if cur.split(' ').count() >= 4 {
                out.push(std::mem::take(&mut cur));
                if out.len() == max {
                    break;
                }
            }
            cur.clear();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_json_lines() {
        let items = parse_lines(b"a\r\n\n\"b\"\n", false).unwrap();
        assert_eq!(items.iter().map(|i| i.text.as_str()).collect::<Vec<_>>(), ["a", "", "\"b\""]);
        let items = parse_lines(b"\"a\"\n{\"text\":\"b\",\"id\":7}\n", true).unwrap();
        assert_eq!((items[1].text.as_str(), items[1].id.clone()), ("b", Some(serde_json::json!(7))));
        assert_eq!(parse_lines(b"ok\n\xff\n", false).unwrap_err(), TextError::Utf8 { line: 2, column: 1 });
        assert!(matches!(parse_lines(b"{\"text\": 1}", true), Err(TextError::Shape { line: 1, .. })));
        assert!(matches!(parse_lines(b"[1]\n", true), Err(TextError::Shape { line: 1, .. })));
        assert!(matches!(parse_lines(b"\"a\"\n{", true), Err(TextError::Json { line: 2, .. })));
        assert!(parse_lines(b"", true).unwrap().is_empty());
    }

    #[test]
    fn labelled_lines() {
        let v = parse_labelled(b"{\"text\":\"x\",\"label\":\"a\"}\n\n{\"text\":\"y\",\"label\":3}\n{\"text\":\"z\",\"label\":true}").unwrap();
        assert_eq!(v.iter().map(|e| e.label.as_str()).collect::<Vec<_>>(), ["a", "3", "true"]);
        assert_eq!(parse_labelled(b"\n \n"), Err(TextError::Empty));
        assert!(matches!(parse_labelled(b"{\"text\":\"x\"}"), Err(TextError::Shape { line: 1, .. })));
        assert!(matches!(parse_labelled(b"{\"text\":\"x\",\"label\":null}"), Err(TextError::Shape { .. })));
    }

    #[test]
    fn calibration_sentences_split_after_stops_and_skip_short_ones() {
        let t = "It was a bright cold day in April. Yes! \"Who is there?\" she asked at the door.\n\nThe clocks were striking thirteen and nobody minded";
        // A closing quote after the stop ends the sentence too; "Yes!" and the 3-word question
        // are too short; the unfinished last one is not a sentence.
        assert_eq!(sentences(t, 10), vec!["It was a bright cold day in April.", "she asked at the door."]);
        assert_eq!(sentences(t, 1).len(), 1);
        assert!(sentences("", 5).is_empty());
    }
}
