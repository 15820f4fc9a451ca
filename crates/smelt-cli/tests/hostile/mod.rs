//! Running `smelt` on a generated case and judging what it did: the checks every hostile case
//! shares (exit code, one-line message, no panic, output untouched, memory under a bound).
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Address space a hostile run may take (`ulimit -v`): far above what the tiny models need
/// (about 300 MiB with the threads' stacks and allocator arenas), far below what an unbounded
/// allocation from a hostile count would ask for.
pub const MEMORY_LIMIT_MIB: u64 = 1024;

/// What a case must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Refuse: exit 1 (or 2 for a usage error) with a one-line message.
    Fail,
    /// Either succeed, or refuse as above; never crash.
    Either,
}

/// One run of `smelt`.
pub struct Case {
    pub name: String,
    pub args: Vec<String>,
    pub stdin: Option<Vec<u8>>,
    pub expect: Expect,
    /// An output file that existed before the run: it must be byte-identical after a refusal.
    pub output: Option<PathBuf>,
}

impl Case {
    pub fn new(name: impl Into<String>, args: &[&str], expect: Expect) -> Case {
        Case { name: name.into(), args: args.iter().map(|s| s.to_string()).collect(), stdin: None, expect, output: None }
    }

    pub fn with_output(mut self, p: &Path) -> Case {
        self.output = Some(p.to_path_buf());
        self
    }

    pub fn with_stdin(mut self, s: &str) -> Case {
        self.stdin = Some(s.as_bytes().to_vec());
        self
    }
}

/// What came back.
pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    pub seconds: f64,
}

/// Runs `smelt args` under the memory limit, killing it after `timeout`.
pub fn run(args: &[String], stdin: Option<&[u8]>, timeout: Duration) -> Outcome {
    let script = format!("ulimit -v {}; exec \"$0\" \"$@\"", MEMORY_LIMIT_MIB * 1024);
    // Tests run in parallel threads: every run has its own capture files.
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let k = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("smelt-hostile-io-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (out_path, err_path) = (dir.join(format!("{k}.stdout")), dir.join(format!("{k}.stderr")));
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_smelt"))
        .args(args)
        .env("SMELT_OFFLINE", "1")
        .env_remove("SMELT_THREADS")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("run smelt");
    if let Some(input) = stdin {
        use std::io::Write;
        let _ = child.stdin.take().unwrap().write_all(input);
    }
    let t0 = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > timeout {
            let _ = child.kill();
            timed_out = true;
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let read = |p: &Path| {
        let mut s = Vec::new();
        let _ = std::fs::File::open(p).and_then(|mut f| f.read_to_end(&mut s));
        String::from_utf8_lossy(&s).into_owned()
    };
    let o = Outcome { code: status.code(), stdout: read(&out_path), stderr: read(&err_path), timed_out, seconds: t0.elapsed().as_secs_f64() };
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    o
}

const SENTINEL: &[u8] = b"an existing output file that a failed run must leave alone\n";

/// Runs a case and returns `Err(why)` when it broke a rule.
pub fn check(case: &Case, timeout: Duration) -> Result<Outcome, String> {
    if let Some(p) = &case.output {
        std::fs::write(p, SENTINEL).unwrap();
    }
    let o = run(&case.args, case.stdin.as_deref(), timeout);
    let ctx = || format!("case {}: smelt {}\nexit {:?}\nstderr:\n{}", case.name, case.args.join(" "), o.code, o.stderr);
    if o.timed_out {
        return Err(format!("{}\ntimed out after {:.0} s", ctx(), o.seconds));
    }
    let Some(code) = o.code else { return Err(format!("{}\nkilled by a signal (a crash, or the {MEMORY_LIMIT_MIB} MiB memory limit)", ctx())) };
    if o.stderr.contains("panicked") || code == 101 {
        return Err(format!("{}\npanicked", ctx()));
    }
    if code != 0 {
        if code != 1 && code != 2 {
            return Err(format!("{}\nexit code {code}: expected 1 (error) or 2 (usage)", ctx()));
        }
        let lines: Vec<&str> = o.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let errors: Vec<&&str> = lines.iter().filter(|l| l.starts_with("error")).collect();
        let ok = if code == 1 {
            errors.len() == 1 && lines.iter().all(|l| l.starts_with("error: ") || l.starts_with("warning: "))
        } else {
            lines.first().is_some_and(|l| l.starts_with("error: "))
        };
        if !ok {
            return Err(format!("{}\nthe message is not one line starting with \"error: \"", ctx()));
        }
        if let Some(p) = &case.output {
            if std::fs::read(p).ok().as_deref() != Some(SENTINEL) {
                return Err(format!("{}\nthe existing output {} was changed by a failed run", ctx(), p.display()));
            }
            let dir = p.parent().unwrap();
            let leftovers: Vec<String> = std::fs::read_dir(dir).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.contains(".tmp-")).collect();
            if !leftovers.is_empty() {
                return Err(format!("{}\ntemporary files left: {leftovers:?}", ctx()));
            }
        }
    } else {
        if case.expect == Expect::Fail {
            return Err(format!("{}\nexited 0, expected a refusal", ctx()));
        }
        // Success must not carry garbage: no NaN or null numbers in what was written.
        let mut written = o.stdout.clone();
        if let Some(p) = &case.output {
            if let Ok(b) = std::fs::read(p) {
                if p.extension().is_some_and(|e| e == "json" || e == "jsonl") {
                    written.push_str(&String::from_utf8_lossy(&b));
                }
            }
        }
        if written.contains("null") || written.contains("NaN") {
            return Err(format!("{}\nexited 0 with non-finite numbers in its output:\n{}", ctx(), &written[..written.len().min(400)]));
        }
    }
    Ok(o)
}

/// Runs every case; panics with every broken rule at once (and the counts).
pub fn check_all(title: &str, cases: &[Case], timeout: Duration) -> (usize, usize) {
    let (mut failures, mut refused) = (Vec::new(), 0);
    let show = std::env::var("SMELT_HOSTILE_SHOW").is_ok();
    for c in cases {
        match check(c, timeout) {
            Ok(o) => {
                refused += (o.code != Some(0)) as usize;
                if show {
                    eprintln!("{}\n    -> {}", c.name, o.stderr.lines().last().unwrap_or("(exit 0)"));
                }
            }
            Err(e) => failures.push(e),
        }
    }
    eprintln!("{title}: {} cases, {refused} refused cleanly, {} accepted, {} broke a rule", cases.len(), cases.len() - refused - failures.len(), failures.len());
    assert!(failures.is_empty(), "{} of {} {title} cases broke a rule:\n\n{}", failures.len(), cases.len(), failures.join("\n\n"));
    (cases.len(), refused)
}

/// How many generated cases of each kind: a short run in CI, `SMELT_HOSTILE_CASES=N` by hand.
pub fn budget(default: usize) -> usize {
    std::env::var("SMELT_HOSTILE_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("smelt-hostile-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
