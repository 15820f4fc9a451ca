//! Ranges of numeric settings, one check and one message whatever the value's source: a command
//! line flag, a file that carries settings (`sentence_bert_config.json`, GGUF metadata) or,
//! later, a server request. A range is data ([`Bound`]), so the command line can print it in its
//! help and test it, and the library can apply it to values read from files.

/// The closed (or, at the bottom, open) range a numeric setting must lie in.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bound {
    /// What the value is called where it comes from (a flag's or a key's name).
    pub name: &'static str,
    pub min: f64,
    pub max: f64,
    /// `min` itself is not allowed (`(min, max]`).
    pub min_exclusive: bool,
    /// Only whole numbers.
    pub integer: bool,
}

/// A value outside its [`Bound`], or not a finite number.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{name} = {value} is out of range: it must be {expected}")]
pub struct SettingError {
    pub name: String,
    pub value: String,
    pub expected: String,
}

impl Bound {
    /// Whole numbers `min..=max`.
    pub const fn int(name: &'static str, min: u64, max: u64) -> Bound {
        Bound { name, min: min as f64, max: max as f64, min_exclusive: false, integer: true }
    }

    /// Finite numbers in `[min, max]`.
    pub const fn float(name: &'static str, min: f64, max: f64) -> Bound {
        Bound { name, min, max, min_exclusive: false, integer: false }
    }

    /// Finite numbers in `(0, max]`.
    pub const fn positive(name: &'static str, max: f64) -> Bound {
        Bound { name, min: 0.0, max, min_exclusive: true, integer: false }
    }

    /// The same range under another name (a key in a file rather than a flag).
    pub const fn named(self, name: &'static str) -> Bound {
        Bound { name, ..self }
    }

    /// The same range with a lower maximum (a model's own limit).
    pub fn at_most(self, max: f64) -> Bound {
        Bound { max: self.max.min(max), ..self }
    }

    /// The range in words, as help texts and errors print it: `0 to 100`,
    /// `more than 0 and at most 10`.
    pub fn text(&self) -> String {
        let num = |v: f64| {
            if v >= u64::MAX as f64 {
                u64::MAX.to_string()
            } else if self.integer || v.fract() == 0.0 && v.abs() < 1e15 {
                format!("{}", v as i64)
            } else {
                format!("{v}")
            }
        };
        if self.min_exclusive {
            format!("more than {} and at most {}", num(self.min), num(self.max))
        } else {
            format!("{} to {}", num(self.min), num(self.max))
        }
    }

    /// `v` if it is finite, whole when it must be, and inside the range.
    pub fn check(&self, v: f64) -> Result<f64, SettingError> {
        self.check_as(v, self.name)
    }

    /// [`Bound::check`] naming the value `name` in the error (e.g. a key and its file).
    pub fn check_as(&self, v: f64, name: &str) -> Result<f64, SettingError> {
        let low_ok = if self.min_exclusive { v > self.min } else { v >= self.min };
        if v.is_finite() && low_ok && v <= self.max && (!self.integer || v.fract() == 0.0) {
            Ok(v)
        } else {
            let kind = if self.integer { "a whole number from " } else { "a number, " };
            Err(SettingError { name: name.into(), value: format!("{v}"), expected: format!("{kind}{}", self.text()) })
        }
    }

    /// Parses `s` as this setting (for command-line values): a number, then [`Bound::check`].
    pub fn parse(&self, s: &str) -> Result<f64, SettingError> {
        let bad = || SettingError {
            name: self.name.into(),
            value: format!("{s:?}"),
            expected: format!("{}{}", if self.integer { "a whole number from " } else { "a number, " }, self.text()),
        };
        let v: f64 = if self.integer { s.trim().parse::<i128>().map(|v| v as f64).map_err(|_| bad())? } else { s.trim().parse().map_err(|_| bad())? };
        self.check(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_check_range_finiteness_and_wholeness() {
        let t = Bound::float("temperature", 0.0, 100.0);
        assert_eq!(t.check(0.0), Ok(0.0));
        assert_eq!(t.check(100.0), Ok(100.0));
        for bad in [-1e-9, 100.000001, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let e = t.check(bad).unwrap_err();
            assert!(e.to_string().contains("temperature") && e.to_string().contains("0 to 100"), "{e}");
        }
        let p = Bound::positive("repeat-penalty", 10.0);
        assert!(p.check(0.0).is_err() && p.check(1e-6).is_ok() && p.check(10.0).is_ok());
        assert_eq!(p.text(), "more than 0 and at most 10");
        let n = Bound::int("threads", 1, 4096);
        assert!(n.check(1.5).is_err() && n.check(0.0).is_err() && n.check(4096.0).is_ok());
        assert!(n.parse("-3").unwrap_err().to_string().contains("whole number from 1 to 4096"));
        assert!(n.parse("1e3").is_err(), "integers are written as integers");
        assert!(n.parse("99999999999999999999999999999999999999999").is_err());
        assert_eq!(Bound::float("top-p", 0.0, 1.0).parse(" 0.5 "), Ok(0.5));
        assert!(Bound::float("top-p", 0.0, 1.0).parse("nan").is_err());
        let e = n.named("max_seq_length").at_most(256.0).check_as(512.0, "max_seq_length in x.json").unwrap_err();
        assert_eq!(e.to_string(), "max_seq_length in x.json = 512 is out of range: it must be a whole number from 1 to 256");
    }
}
