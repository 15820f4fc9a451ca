//! The settings fuzzer: every numeric option of every command, found in the commands' own
//! `--help` (so an option without a stated range fails here), is given hostile values (NaN,
//! infinities, signs, fractions, huge numbers, text, values just outside and at its range) on
//! tiny models. Out of range: exit 2 with a one-line message naming the range. In range: the
//! command runs, or refuses with a one-line message; never a panic, a crash, or memory past the
//! bound.
//!
//! CI runs a sample; `SMELT_HOSTILE_CASES=1 cargo test -p smelt-cli --test settings_fuzz --
//! --nocapture` tries every value on every option (counts are printed).

mod hostile;
mod tiny;

use std::path::Path;
use std::time::Duration;

use hostile::{check, scratch, Case, Expect};

/// A numeric option as its help states it.
#[derive(Debug, Clone)]
struct Opt {
    flag: String,
    min: f64,
    max: f64,
    /// The maximum as the help writes it (exact, where f64 is not: u64::MAX).
    max_text: String,
    min_exclusive: bool,
    integer: bool,
}

/// Parses `[A to B]` or `[more than A and at most B]` from an option's help: (min, max, max as
/// written, min excluded).
fn range(help: &str) -> Option<(f64, f64, String, bool)> {
    let open = help.rfind('[')?;
    let body = &help[open + 1..open + help[open..].find(']')?];
    if let Some(rest) = body.strip_prefix("more than ") {
        let (a, b) = rest.split_once(" and at most ")?;
        return Some((a.parse().ok()?, b.parse().ok()?, b.to_string(), true));
    }
    let (a, b) = body.split_once(" to ")?;
    Some((a.parse().ok()?, b.parse().ok()?, b.to_string(), false))
}

/// The numeric options of a subcommand (`path` like `["classify", "train"]`), from its help.
fn options(path: &[&str]) -> Vec<Opt> {
    let mut args: Vec<&str> = path.to_vec();
    args.push("-h");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_smelt")).args(&args).env("COLUMNS", "1000").output().unwrap();
    let help = String::from_utf8_lossy(&o.stdout).into_owned();
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for line in help.lines() {
        let t = line.trim_start();
        if !t.starts_with('-') {
            continue;
        }
        let Some(value) = t.find(" <").map(|i| &t[i + 2..]) else { continue };
        let Some(name) = value.split('>').next() else { continue };
        if !["N", "X", "P", "T", "K", "W", "G", "PCT"].contains(&name) {
            continue;
        }
        let flag = t.split([',', ' ', '=']).find(|w| w.starts_with("--")).unwrap().to_string();
        let stripped = line.replace("[default: ", "(default ");
        match range(&stripped) {
            Some((min, max, max_text, min_exclusive)) => out.push(Opt { flag, min, max, max_text, min_exclusive, integer: name == "N" || name == "K" }),
            None => missing.push(flag),
        }
    }
    assert!(missing.is_empty(), "smelt {} -h: numeric options without a stated range: {missing:?}\n{help}", path.join(" "));
    out
}

/// Values to try for `o`: (text, whether it is valid).
fn values(o: &Opt) -> Vec<(String, bool)> {
    let mut v = vec![
        ("nan".into(), false),
        ("inf".into(), false),
        ("-inf".into(), false),
        ("abc".into(), false),
        ("".into(), false),
        ("1e400".into(), false),
        ("99999999999999999999999999".into(), false),
        (format!("{}", o.max * 2.0 + 1.0), false),
        (fmt(o.min), !o.min_exclusive),
        (o.max_text.clone(), true),
    ];
    if o.min > f64::MIN && (o.min >= 1.0 || o.min_exclusive || o.min == 0.0) {
        v.push((fmt(if o.integer { o.min - 1.0 } else if o.min_exclusive { o.min } else { o.min - 0.5 }), false));
    }
    if o.integer {
        v.push((fmt(o.min + 0.5), false));
        v.push(("-1".into(), o.min <= -1.0));
    }
    v
}

fn fmt(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e18 {
        format!("{}", x as i128)
    } else {
        format!("{x}")
    }
}

#[test]
fn every_numeric_option_refuses_hostile_values_and_survives_extreme_ones() {
    let dir = scratch("settings");
    let tiny::Files { gguf, bert, texts, data } = tiny::files(&dir, 3);
    let text = dir.join("text.txt");
    std::fs::write(&text, "hello hello world, the man is playing the guitar. ".repeat(40)).unwrap();
    let head = dir.join("head.json");
    let out = dir.join("out.npy");
    let (g, b) = (gguf.to_str().unwrap(), bert.to_str().unwrap());
    let p = |x: &Path| x.to_str().unwrap().to_string();
    // Each command with small work, so that extreme but valid values still finish.
    let measure = ["--text", &p(&text), "--ctx", "32", "--chunks", "1", "--requests", "1", "--prompt", "4", "--gen", "2", "--format", "none"];
    let commands: Vec<(Vec<&str>, Vec<String>, Option<&str>)> = vec![
        (vec!["run"], ["-m", g, "--raw", "-p", "hello", "--max-tokens", "3"].map(String::from).to_vec(), None),
        (vec!["chat"], ["-m", g, "--max-tokens", "3"].map(String::from).to_vec(), Some("hi\n/exit\n")),
        (vec!["bench"], ["-m", g, "--prompt", "8", "--gen", "4", "--repetitions", "1"].map(String::from).to_vec(), None),
        (vec!["embed"], ["-m", b, &p(&texts), "-o", &p(&out), "--window", "16"].map(String::from).to_vec(), None),
        (vec!["classify", "train"], ["-m", b, &p(&data), "-o", &p(&head)].map(String::from).to_vec(), None),
        (vec!["eval"], [g].iter().map(|s| s.to_string()).chain(measure.iter().map(|s| s.to_string())).collect(), None),
        (vec!["compare"], [g, "--against", g].iter().map(|s| s.to_string()).chain(measure.iter().map(|s| s.to_string())).collect(), None),
        (vec!["imatrix"], [g, "--calib", &p(&text), "-o", &p(&dir.join("im.gguf"))].map(String::from).to_vec(), None),
        (vec!["quantize"], [g, &p(&dir.join("q.gguf")), "--to", "q8_0", "--calib", &p(&text), "--gptq", "--awq"].map(String::from).to_vec(), None),
        (vec!["fit"], [g, "--max-size", "60kB", "--calib", &p(&text), "--calib-ctx", "32", "--probe-chunks", "1", "--front-checks", "1", "--awq", "-o", &p(&dir.join("f.gguf"))].map(String::from).to_vec(), None),
        (vec!["prune"], [g, "-o", &p(&dir.join("p.gguf")), "--method", "sparsegpt", "--sparsity", "0.5", "--calib", &p(&text), "--calib-ctx", "32"].map(String::from).to_vec(), None),
        (vec!["models"], vec![], None),
    ];
    let full = std::env::var("SMELT_HOSTILE_CASES").is_ok();
    let (mut runs, mut refused, mut failures) = (0, 0, Vec::new());
    let mut rng = tiny::Rng(0x5e77_1465);
    for (path, base, stdin) in &commands {
        let mut opts = options(path);
        if path == &["models"] {
            opts.retain(|o| o.flag == "--threads"); // the global option, on the quickest command
        }
        for o in &opts {
            let vals = values(o);
            // CI: every invalid value is cheap (refused at parsing); valid extremes run the
            // command, so a sample of them.
            for (k, (v, valid)) in vals.iter().enumerate() {
                if !full && *valid && rng.below(3) != 0 && k != vals.len() - 1 {
                    continue;
                }
                let mut args: Vec<String> = path.iter().map(|s| s.to_string()).collect();
                // The base command without its own value for this option, nor the value of an
                // option it excludes (fit's budget is one of --max-size, --max-bpw,
                // --min-quality).
                let budgets = ["--max-size", "--max-bpw", "--min-quality"];
                let excluded = |a: &str| a == o.flag || (budgets.contains(&a) && budgets.contains(&o.flag.as_str()));
                let mut skip = false;
                for a in base {
                    if std::mem::take(&mut skip) {
                        continue;
                    }
                    if excluded(a) {
                        skip = true;
                        continue;
                    }
                    args.push(a.clone());
                }
                // Half with `--flag VALUE` (negative numbers must be taken as values), half with `=`.
                if rng.below(2) == 0 && !v.is_empty() {
                    args.push(o.flag.clone());
                    args.push(v.clone());
                } else {
                    args.push(format!("{}={v}", o.flag));
                }
                args.push("-q".into());
                let name = format!("{} {}={v}", path.join(" "), o.flag);
                let mut case = Case { name, args, stdin: stdin.map(|s| s.as_bytes().to_vec()), expect: if *valid { Expect::Either } else { Expect::Fail }, output: None };
                if path == &["embed"] {
                    case.output = Some(out.clone());
                }
                runs += 1;
                match check(&case, Duration::from_secs(120)) {
                    Ok(res) => {
                        let code = res.code.unwrap_or(-1);
                        if !*valid && code != 2 {
                            failures.push(format!("{}: exit {code}, expected a usage error (2)\n{}", case.name, res.stderr));
                        } else if !*valid && !res.stderr.contains("it must be") {
                            failures.push(format!("{}: the message does not give the range\n{}", case.name, res.stderr));
                        } else if *valid && code == 2 {
                            failures.push(format!("{}: a value inside the stated range was refused as a usage error\n{}", case.name, res.stderr));
                        }
                        refused += (code != 0) as usize;
                    }
                    Err(e) => failures.push(e),
                }
            }
        }
    }
    eprintln!("settings fuzzer: {runs} runs, {refused} refused, {} broke a rule", failures.len());
    assert!(runs > 150, "too few settings cases: {runs}");
    assert!(failures.is_empty(), "{} settings cases broke a rule:\n\n{}", failures.len(), failures.join("\n\n"));
}

#[test]
fn threads_are_capped_at_the_cpus_with_a_warning() {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let o = hostile::run(&["-t".into(), (cpus + 3).to_string(), "models".into(), "--json".into()], None, Duration::from_secs(30));
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(o.stderr.contains("warning") && o.stderr.contains(&format!("running {cpus} threads")), "{}", o.stderr);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_smelt")).args(["models"]).env("SMELT_THREADS", "zero").output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("SMELT_THREADS"), "{}", String::from_utf8_lossy(&o.stderr));
}
