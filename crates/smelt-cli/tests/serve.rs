//! `smelt serve` from outside: the binary on a free port, the real `openai` Python client
//! against it (tests/serve/openai_client.py: chat, streaming chat, log-probabilities,
//! completions, embeddings, models, errors), then SIGTERM: it drains and exits with 0.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// GET `path` on `addr`; the status code.
fn status(addr: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn the_openai_client_works_against_smelt_serve() {
    let log_file = std::env::temp_dir().join(format!("smelt-serve-requests-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&log_file);
    let mut child = Command::new(env!("CARGO_BIN_EXE_smelt"))
        .args(["serve", "--port", "0", "--embed", "all-minilm-l6-v2", "-P", "2", "-c", "1024", "--max-body", "1048576", "--drift-window", "2", "--request-log"])
        .arg(&log_file)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start smelt serve");
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "smelt serve exited before listening");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // Keep reading stderr so the server never blocks on a full pipe.
    let log = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = err.read_to_string(&mut rest);
        rest
    });
    let t = Instant::now();
    while status(&addr, "/health") != Some(200) {
        assert!(t.elapsed() < Duration::from_secs(120), "not healthy after 2 minutes");
        std::thread::sleep(Duration::from_millis(100));
    }
    let python = std::env::var("SMELT_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/serve/openai_client.py");
    let o = Command::new(&python).args([script, &format!("http://{addr}/v1"), "smollm2-135m", "all-minilm-l6-v2"]).output().expect("run python");
    let out = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && out.contains("ok"), "the openai client checks failed (scripts/test installs the `openai` package):\n{out}");
    assert_eq!(status(&addr, "/metrics"), Some(200));
    route_eval_against(&addr);
    // The request log, read back by `smelt monitor`.
    let o = Command::new(env!("CARGO_BIN_EXE_smelt")).args(["monitor", "--window", "2", "--json"]).arg(&log_file).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let w: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let w = w.as_array().unwrap();
    assert!(w.len() >= 2, "{w:?}");
    assert!(w.iter().skip(1).any(|x| x["drift"].as_f64().is_some_and(|d| d > 0.0)), "{w:?}");
    let _ = std::fs::remove_file(&log_file);
    // SIGTERM: a clean exit.
    kill_term(child.id());
    let t = Instant::now();
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "smelt serve did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = log.join().unwrap();
    assert!(code.success(), "exit {code:?}; log:\n{log}");
}

/// `smelt route label` and `eval` with this server as both sides (one model: the same greedy
/// answers, so escalating never changes quality), and a bad task file refused clearly.
fn route_eval_against(addr: &str) {
    let dir = std::env::temp_dir().join(format!("smelt-route-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let task = dir.join("task.jsonl");
    std::fs::write(&task, "{\"prompt\": \"The capital of France is\", \"answer\": \"Paris\"}\n{\"messages\": [{\"role\": \"user\", \"content\": \"Say yes.\"}], \"answer\": \"yes\"}\n{\"prompt\": \"One, two, three,\", \"answer\": \"four\"}\n").unwrap();
    let url = format!("http://{addr}/v1");
    let run = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_smelt")).args(args).output().unwrap();
    let (records, labels, plot) = (dir.join("r.jsonl"), dir.join("l.jsonl"), dir.join("p.svg"));
    let o = run(&["route", "label", task.to_str().unwrap(), "--local", &url, "--remote", &url, "--records", records.to_str().unwrap(), "-o", labels.to_str().unwrap(), "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&labels).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r["label"] == "local" || r["label"] == "remote"), "{rows:?}");
    let o = run(&["route", "eval", "--from", records.to_str().unwrap(), "--json", "--plot", plot.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["items"], 3);
    assert_eq!(r["local_quality"], r["remote_quality"], "one model on both sides");
    assert!(r["curves"].as_array().unwrap().iter().any(|c| c["signal"] == "confidence"));
    assert!(std::fs::read_to_string(&plot).unwrap().starts_with("<svg"));
    std::fs::write(&task, "{\"prompt\": \"no answer\"}\n").unwrap();
    let o = run(&["route", "eval", task.to_str().unwrap(), "--local", &url, "--remote", &url]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("line 1"), "{}", String::from_utf8_lossy(&o.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGTERM through the `kill` command (no libc dependency in the tests).
fn kill_term(pid: u32) {
    let s = Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("run kill");
    assert!(s.success());
}
