//! A detector for personal and secret data in request text, for the router: a request where
//! it finds any is pinned to the local model (or, when so configured, redacted before it is
//! escalated), so that raw private data never leaves the machine.
//!
//! Each kind is a pattern and, where the data carries one, a checksum that keeps look-alikes
//! out: card numbers must pass the Luhn check, IBANs the ISO 13616 mod-97 check, US social
//! security numbers the SSA's never-issued ranges. Patterns are deliberately broad (a false
//! positive only keeps a request local); users add their own with [`Detector::with_patterns`].

use fancy_regex::Regex;

/// What a finding is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Email,
    Phone,
    CardNumber,
    Iban,
    /// US social security numbers, UK national insurance numbers.
    NationalId,
    /// API keys, access tokens, private keys, `password=...` assignments.
    Secret,
    /// Street addresses (a number, a name and a street type).
    Address,
    /// A pattern given by the user, by its name.
    Custom(String),
}

impl Kind {
    /// The label used in metrics, response headers and redactions.
    pub fn label(&self) -> &str {
        match self {
            Kind::Email => "email",
            Kind::Phone => "phone",
            Kind::CardNumber => "card_number",
            Kind::Iban => "iban",
            Kind::NationalId => "national_id",
            Kind::Secret => "secret",
            Kind::Address => "address",
            Kind::Custom(name) => name,
        }
    }
}

/// One piece of private data: its kind and byte range in the text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub kind: Kind,
    pub start: usize,
    pub end: usize,
}

/// A check a match must also pass.
#[derive(Clone, Copy, Debug)]
enum Check {
    None,
    Luhn,
    Iban,
    Ssn,
}

struct Rule {
    kind: Kind,
    re: Regex,
    check: Check,
}

/// The built-in rules, in the order they are tried (earlier rules win overlapping spans).
const BUILT_IN: &[(&str, &str, Check)] = &[
    ("secret", r"-----BEGIN [A-Z ]*PRIVATE KEY-----", Check::None),
    // OpenAI-style, AWS access key ids, GitHub, Slack, Google API keys, JWTs.
    ("secret", r"\b(?:sk|pk|rk)-(?:[A-Za-z0-9]+-)*[A-Za-z0-9_]{20,}", Check::None),
    ("secret", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", Check::None),
    ("secret", r"\bgh[pousr]_[A-Za-z0-9]{30,}\b", Check::None),
    ("secret", r"\bxox[abprs]-[A-Za-z0-9-]{10,}", Check::None),
    ("secret", r"\bAIza[0-9A-Za-z_-]{35}\b", Check::None),
    ("secret", r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}", Check::None),
    ("secret", r"(?i)\b(?:api[_-]?key|secret|token|passw(?:or)?d|pwd)\b\s*[:=]\s*\S{6,}", Check::None),
    ("email", r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b", Check::None),
    // 13 to 19 digits, optionally grouped by spaces or dashes.
    ("card_number", r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])", Check::Luhn),
    ("iban", r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b", Check::Iban),
    ("national_id", r"(?<!\d)\d{3}-\d{2}-\d{4}(?!\d)", Check::Ssn),
    ("national_id", r"(?i)\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b", Check::None),
    // International (+CC ...) or North American ((555) 123-4567, 555-123-4567) numbers.
    ("phone", r"(?<![\w+])\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){1,4}(?!\d)", Check::None),
    ("phone", r"(?<!\d)(?:\(\d{3}\) ?|\d{3}[.-])\d{3}[.-]\d{4}(?!\d)", Check::None),
    (
        "address",
        r"(?i)\b\d{1,5}\s+(?:[A-Za-z]+\s+){1,4}(?:street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|place|pl|square|sq|way|terrace|close)\b\.?",
        Check::None,
    ),
];

/// Errors in user patterns.
#[derive(Debug, thiserror::Error)]
pub enum PatternError {
    #[error("privacy pattern {name:?} is not a valid regular expression: {reason}")]
    Invalid { name: String, reason: String },
    #[error("privacy pattern {name:?} matches the empty string, so it would match everywhere")]
    MatchesEmpty { name: String },
}

/// Finds private data in text.
pub struct Detector {
    rules: Vec<Rule>,
}

impl Default for Detector {
    fn default() -> Self {
        let rules = BUILT_IN
            .iter()
            .map(|&(label, re, check)| {
                let kind = match label {
                    "secret" => Kind::Secret,
                    "email" => Kind::Email,
                    "card_number" => Kind::CardNumber,
                    "iban" => Kind::Iban,
                    "national_id" => Kind::NationalId,
                    "phone" => Kind::Phone,
                    _ => Kind::Address,
                };
                Rule { kind, re: Regex::new(re).expect("built-in privacy patterns compile"), check }
            })
            .collect();
        Detector { rules }
    }
}

impl Detector {
    /// The built-in rules plus `(name, regex)` pairs of the user's.
    pub fn with_patterns(extra: &[(String, String)]) -> Result<Detector, PatternError> {
        let mut d = Detector::default();
        for (name, re) in extra {
            let re = Regex::new(re).map_err(|e| PatternError::Invalid { name: name.clone(), reason: e.to_string() })?;
            if re.is_match("").unwrap_or(false) {
                return Err(PatternError::MatchesEmpty { name: name.clone() });
            }
            d.rules.push(Rule { kind: Kind::Custom(name.clone()), re, check: Check::None });
        }
        Ok(d)
    }

    /// Every finding, ordered by position, without overlaps (the earlier rule wins).
    pub fn scan(&self, text: &str) -> Vec<Finding> {
        let mut found: Vec<Finding> = Vec::new();
        for rule in &self.rules {
            // A pattern that runs out of its backtracking budget on hostile text is skipped
            // for that text, never an error: the other rules still run.
            for m in rule.re.find_iter(text).map_while(Result::ok) {
                let (start, end) = (m.start(), m.end());
                if !passes(rule.check, m.as_str()) || found.iter().any(|f| start < f.end && f.start < end) {
                    continue;
                }
                found.push(Finding { kind: rule.kind.clone(), start, end });
            }
        }
        found.sort_by_key(|f| f.start);
        found
    }

    /// `text` with every finding replaced by `[LABEL]` (e.g. `[EMAIL]`), and the findings.
    pub fn redact(&self, text: &str) -> (String, Vec<Finding>) {
        let found = self.scan(text);
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for f in &found {
            out.push_str(&text[at..f.start]);
            out.push('[');
            out.push_str(&f.kind.label().to_ascii_uppercase());
            out.push(']');
            at = f.end;
        }
        out.push_str(&text[at..]);
        (out, found)
    }
}

fn passes(check: Check, s: &str) -> bool {
    match check {
        Check::None => true,
        Check::Luhn => luhn(s),
        Check::Iban => iban(s),
        Check::Ssn => ssn(s),
    }
}

/// The Luhn checksum over the digits of `s` (separators ignored).
pub fn luhn(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| if i % 2 == 1 { if d * 2 > 9 { d * 2 - 9 } else { d * 2 } } else { d })
        .sum();
    sum.is_multiple_of(10)
}

/// The IBAN check (ISO 13616): the first four characters moved to the end, letters as 10..35,
/// the number mod 97 is 1.
pub fn iban(s: &str) -> bool {
    let c: Vec<char> = s.chars().filter(|c| !c.is_whitespace()).collect();
    if !(15..=34).contains(&c.len()) {
        return false;
    }
    let mut rem: u32 = 0;
    for ch in c[4..].iter().chain(&c[..4]) {
        let v = match ch.to_digit(36) {
            Some(v) => v,
            None => return false,
        };
        rem = if v >= 10 { (rem * 100 + v) % 97 } else { (rem * 10 + v) % 97 };
    }
    rem == 1
}

/// A US social security number in a range that is ever issued (not area 000, 666 or 900-999,
/// not group 00, not serial 0000).
fn ssn(s: &str) -> bool {
    let p: Vec<&str> = s.split('-').collect();
    let (Ok(area), Ok(group), Ok(serial)) = (p[0].parse::<u32>(), p[1].parse::<u32>(), p[2].parse::<u32>()) else { return false };
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<String> {
        Detector::default().scan(text).iter().map(|f| f.kind.label().to_string()).collect()
    }

    #[test]
    fn finds_each_kind_and_checks_checksums() {
        assert_eq!(kinds("write to jane.doe+work@example.co.uk today"), ["email"]);
        assert_eq!(kinds("card 4111 1111 1111 1111 exp 12/29"), ["card_number"]);
        assert_eq!(kinds("card 4111-1111-1111-1112"), Vec::<String>::new(), "fails Luhn");
        assert_eq!(kinds("pay to GB82 WEST 1234 5698 7654 32 please"), ["iban"]);
        assert_eq!(kinds("pay to GB82WEST12345698765433"), Vec::<String>::new(), "fails mod 97");
        assert_eq!(kinds("my SSN is 123-45-6789"), ["national_id"]);
        assert_eq!(kinds("not an SSN: 666-45-6789"), Vec::<String>::new());
        assert_eq!(kinds("NI number AB 12 34 56 C"), ["national_id"]);
        assert_eq!(kinds("call +44 20 7946 0958 or (555) 123-4567"), ["phone", "phone"]);
        assert_eq!(kinds("key sk-proj-abcdefghijklmnopqrstuvwxyz123456"), ["secret"]);
        assert_eq!(kinds("AWS AKIAIOSFODNN7EXAMPLE here"), ["secret"]);
        assert_eq!(kinds("password = hunter2hunter2"), ["secret"]);
        assert_eq!(kinds("-----BEGIN RSA PRIVATE KEY-----\nMIIE"), ["secret"]);
        assert_eq!(kinds("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"), ["secret"]);
        assert_eq!(kinds("I live at 221 Baker Street, London"), ["address"]);
    }

    #[test]
    fn ordinary_text_is_clean() {
        for t in [
            "What is the capital of France?",
            "In 1815 the population was 12,345,678 and rising.",
            "Version 3.14.159 was released on 2024-01-15.",
            "The order number is 12345 and the total was $99.99.",
            "Call me Ishmael.",
            "x = 3; y = 4; tokens = 5",
        ] {
            assert_eq!(kinds(t), Vec::<String>::new(), "{t}");
        }
    }

    #[test]
    fn redaction_replaces_every_finding() {
        let (out, found) = Detector::default().redact("Mail bob@example.com, card 4111111111111111.");
        assert_eq!(out, "Mail [EMAIL], card [CARD_NUMBER].");
        assert_eq!(found.len(), 2);
    }

    #[test]
    fn user_patterns_are_checked_and_used() {
        let d = Detector::with_patterns(&[("employee_id".into(), r"\bEMP-\d{6}\b".into())]).unwrap();
        assert_eq!(d.scan("ticket for EMP-123456")[0].kind, Kind::Custom("employee_id".into()));
        assert!(matches!(Detector::with_patterns(&[("bad".into(), "(".into())]), Err(PatternError::Invalid { .. })));
        assert!(matches!(Detector::with_patterns(&[("empty".into(), "x*".into())]), Err(PatternError::MatchesEmpty { .. })));
    }

    #[test]
    fn checksums_match_published_examples() {
        for good in ["4111111111111111", "5555555555554444", "378282246310005", "6011111111111117"] {
            assert!(luhn(good), "{good}");
        }
        assert!(!luhn("4111111111111112"));
        for good in ["DE89370400440532013000", "FR1420041010050500013M02606", "NL91ABNA0417164300", "GB82WEST12345698765432"] {
            assert!(iban(good), "{good}");
        }
        assert!(!iban("DE89370400440532013001"));
    }
}
