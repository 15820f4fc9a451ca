//! smelt's client against a real Flower 1.41 server (`scripts/flower_server.py`, legacy
//! `start_server`, FedAvg) and against a hostile server built on Flower's own gRPC classes.
//!
//! Needs Python with `flwr==1.41.0`: `SMELT_FLOWER_PYTHON` (scripts/test installs it into
//! $SMELT_HOME/flwr-venv), else `SMELT_PYTHON`, else `python3`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use smelt_federated::client::{self, ClientOptions, Summary};
use smelt_federated::head::{Examples, HeadTask};
use smelt_federated::npy;
use smelt_federated::FedError;

fn python() -> String {
    std::env::var("SMELT_FLOWER_PYTHON").or_else(|_| std::env::var("SMELT_PYTHON")).unwrap_or_else(|_| "python3".into())
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("smelt-fed-{}-{name}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `n` examples of 3 labels in 8 dimensions; `shift` makes clients' data differ.
fn examples(n: usize, shift: f32) -> Examples {
    let mut e = Examples::default();
    for i in 0..n {
        let y = (i * 7 + (shift as usize)) % 3;
        let x = (0..8).map(|j| if j == y { 0.9 } else { 0.0 } + ((i * 8 + j) as f32 * 0.73 + shift).sin() * 0.25).collect();
        e.x.push(x);
        e.y.push(y);
    }
    e
}

fn task(n: usize, shift: f32) -> HeadTask {
    HeadTask::new(vec!["a".into(), "b".into(), "c".into()], 8, examples(n, shift), None, 1e-3).unwrap()
}

/// Runs one client to its end on its own runtime, in a thread.
fn spawn_client(mut t: HeadTask, opts: ClientOptions) -> std::thread::JoinHandle<(Result<Summary, FedError>, Vec<String>)> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let mut lines = Vec::new();
        let r = rt.block_on(client::run(&mut t, &opts, &mut |l: &str| lines.push(l.to_string())));
        (r, lines)
    })
}

/// Waits (up to a minute) until something listens on `port`, for clients with short windows.
fn wait_listening(port: u16) {
    let t0 = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(60), "the server did not start listening on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

fn start(args: &[&str]) -> Server {
    let child = Command::new(python()).args(args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start python (flwr 1.41 needed: see this file's doc)");
    Server(child)
}

fn finish(mut s: Server) -> String {
    let mut err = String::new();
    if let Some(mut e) = s.0.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut err).ok();
    }
    let status = s.0.wait().unwrap();
    assert!(status.success(), "the server failed: {err}");
    err
}

/// Two clients (30 and 50 examples) and two rounds of FedAvg: each round's aggregate is the
/// example-weighted mean of what the clients sent (read from their own audit files, and as the
/// server decoded them with numpy), and the History holds the clients' metrics.
#[test]
fn fedavg_with_a_real_flower_server_averages_what_the_clients_sent() {
    fedavg_round_trip("0");
}

/// The server's bucketing (`--bucket 2`: both clients in one bucket, averaged by example
/// counts before FedAvg) leaves FedAvg's weighted mean unchanged.
#[test]
fn bucketed_fedavg_still_averages_what_the_clients_sent() {
    fedavg_round_trip("2");
}

fn fedavg_round_trip(bucket: &str) {
    let d = dir(&format!("fedavg-bucket{bucket}"));
    let port = free_port();
    let out = d.join("run.json");
    let server = start(&[repo().join("scripts/flower_server.py").to_str().unwrap(), "--address", &format!("127.0.0.1:{port}"), "--clients", "2", "--rounds", "2", "--local-epochs", "2", "--batch-size", "8", "--bucket", bucket, "--out", out.to_str().unwrap()]);
    let sizes = [30usize, 50];
    let handles: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let sent = d.join(format!("client{i}"));
            std::fs::create_dir_all(&sent).unwrap();
            let mut opts = ClientOptions::new(format!("127.0.0.1:{port}"));
            opts.connect_for = Duration::from_secs(60);
            opts.seed = i as u64;
            opts.save_sent = Some(sent);
            spawn_client(task(n, i as f32), opts)
        })
        .collect();
    let logs: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let err = finish(server);
    for (r, lines) in &logs {
        let s = r.as_ref().unwrap_or_else(|e| panic!("{e}\n{lines:#?}\n{err}"));
        assert_eq!(s.ended, "the server ended the run");
        assert_eq!(s.exchanges.iter().filter(|x| x.kind == "fit").count(), 2, "{lines:#?}");
        assert_eq!(s.exchanges.iter().filter(|x| x.kind == "evaluate").count(), 2, "{lines:#?}");
        assert!(s.exchanges.iter().all(|x| x.refused.is_none()), "{lines:#?}");
    }
    let rec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let rounds = rec["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2);
    for r in rounds {
        let round = r["round"].as_u64().unwrap();
        assert_eq!(r["failures"].as_u64(), Some(0));
        // What each client saved of what it sent, decoded by smelt.
        let sent: Vec<Vec<npy::Tensor>> = (0..2).map(|i| (0..2).map(|t| npy::decode(&std::fs::read(d.join(format!("client{i}/fit-{round}-{t}.npy"))).unwrap(), 1 << 20).unwrap()).collect()).collect();
        // ... equals what the server's numpy decoded from the wire, client by client.
        let clients = r["clients"].as_array().unwrap();
        for c in clients {
            let n = c["num_examples"].as_u64().unwrap() as usize;
            let i = sizes.iter().position(|&s| s == n).expect("a client's example count");
            let flat: Vec<f32> = c["parameters"][0].as_array().unwrap().iter().flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32)).collect();
            assert_eq!(flat, sent[i][0].data, "client {i}'s weights as the server read them");
            assert!(c["metrics"]["accuracy"].as_f64().is_some());
        }
        // The aggregate, against the example-weighted mean computed here.
        let total: f64 = sizes.iter().sum::<usize>() as f64;
        for t in 0..2 {
            let agg: Vec<f64> = match &r["aggregated"][t] {
                serde_json::Value::Array(rows) if t == 0 => rows.iter().flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap())).collect(),
                serde_json::Value::Array(v) => v.iter().map(|v| v.as_f64().unwrap()).collect(),
                other => panic!("aggregate {other}"),
            };
            for (k, a) in agg.iter().enumerate() {
                let mean = (0..2).map(|i| sizes[i] as f64 * sent[i][t].data[k] as f64).sum::<f64>() / total;
                assert!((a - mean).abs() <= 1e-6 * mean.abs().max(1e-3), "round {round} tensor {t}[{k}]: server {a}, weighted mean {mean}");
            }
        }
    }
    // Round 2 started from round 1's aggregate: the clients' round-2 updates differ from it by a
    // local fit only, and the History has both rounds' metrics.
    let h = &rec["history"];
    for key in ["metrics_distributed", "metrics_distributed_fit"] {
        assert_eq!(h[key]["accuracy"].as_array().map(Vec::len), Some(2), "{key}: {h}");
    }
    assert_eq!(h["losses_distributed"].as_array().map(Vec::len), Some(2));
    let acc = h["metrics_distributed"]["accuracy"][1][1].as_f64().unwrap();
    assert!(acc > 0.6, "accuracy after two rounds {acc}");
}

/// A server that sends wrong shapes, NaN, integer tensors, a wrong tensor type, an absurd norm
/// and bad config values gets refusals (non-OK status with the reason) and the client stays;
/// good instructions between them are answered; a message over the size limit ends the client
/// with a clear error.
#[test]
fn a_hostile_server_gets_refusals_and_a_clean_exit() {
    let d = dir("hostile");
    let port = free_port();
    let out = d.join("answers.json");
    let server = start(&[repo().join("crates/smelt-federated/tests/malformed_server.py").to_str().unwrap(), &port.to_string(), out.to_str().unwrap(), &(2 << 20).to_string()]);
    let mut opts = ClientOptions::new(format!("127.0.0.1:{port}"));
    opts.max_message_bytes = 1 << 20;
    opts.max_norm = 1e4;
    let (r, lines) = spawn_client(task(20, 0.0), opts).join().unwrap();
    finish(server);
    let e = r.expect_err("the huge message must end the client");
    assert!(matches!(e, FedError::Stream(_)) && e.to_string().contains("limit"), "{e}");
    let answers: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let by = |step: &str| answers.as_array().unwrap().iter().find(|a| a["step"] == step).unwrap_or_else(|| panic!("{step}: {answers}")).clone();
    for (step, words) in [
        ("wrong_shape", "shape [3, 9]"),
        ("nan", "non-finite"),
        ("int_dtype", "<i4"),
        ("one_tensor", "1 tensors"),
        ("wrong_type", "tensor type"),
        ("huge_norm", "norm"),
        ("bad_config", "local_epochs"),
        ("evaluate_nan", "non-finite"),
    ] {
        let a = by(step);
        assert_ne!(a["code"].as_i64(), Some(0), "{step} was accepted: {a}");
        assert!(a["message"].as_str().unwrap().contains(words), "{step}: {a}");
    }
    for step in ["get_parameters", "good_fit", "good_evaluate"] {
        assert_eq!(by(step)["code"].as_i64(), Some(0), "{step}: {answers}");
    }
    assert_eq!(by("good_fit")["tensors"].as_u64(), Some(2));
    assert!(lines.iter().any(|l| l.contains("\"who_knows\"") && l.contains("ignored")), "{lines:#?}");
}

/// Nothing listening: the client keeps trying for its window, then says what to check.
#[test]
fn an_unreachable_server_is_a_clear_error_after_the_wait() {
    let mut opts = ClientOptions::new(format!("127.0.0.1:{}", free_port()));
    opts.connect_for = Duration::from_millis(1500);
    let t0 = std::time::Instant::now();
    let (r, lines) = spawn_client(task(10, 0.0), opts).join().unwrap();
    let e = r.expect_err("nothing listens there");
    assert!(matches!(e, FedError::Unreachable { .. }) && e.to_string().contains("HOST:PORT"), "{e}");
    assert!(t0.elapsed() >= Duration::from_millis(700), "gave up at once");
    assert!(lines.iter().any(|l| l.contains("waiting for the server")), "{lines:#?}");
}

/// Flower's robust strategies and its server-side DP wrapper take smelt's answers unchanged:
/// every round completes with no failed fit and the clients leave when the run ends.
#[test]
fn flower_strategies_and_server_side_dp_work_unchanged() {
    for (name, extra) in [("fedmedian", vec![]), ("trimmed", vec![]), ("krum", vec!["--malicious", "0"]), ("fedprox", vec![]), ("fedavg", vec!["--dp-clip", "5", "--dp-noise", "0.1"])] {
        let d = dir(&format!("strategy-{name}-{}", extra.len()));
        let port = free_port();
        let out = d.join("run.json");
        let mut args = vec![repo().join("scripts/flower_server.py").to_str().unwrap().to_string()];
        args.extend(["--address", &format!("127.0.0.1:{port}"), "--clients", "3", "--rounds", "2", "--strategy", name, "--out", out.to_str().unwrap()].map(String::from));
        args.extend(extra.iter().map(|s| s.to_string()));
        let server = start(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let handles: Vec<_> = (0..3).map(|i| spawn_client(task(20 + 5 * i, i as f32), ClientOptions::new(format!("127.0.0.1:{port}")))).collect();
        let logs: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let err = finish(server);
        for (r, lines) in &logs {
            let s = r.as_ref().unwrap_or_else(|e| panic!("{name}: {e}\n{lines:#?}\n{err}"));
            assert_eq!(s.ended, "the server ended the run", "{name}");
            assert_eq!(s.exchanges.iter().filter(|x| x.kind == "fit" && x.refused.is_none()).count(), 2, "{name}: {lines:#?}");
        }
        let rec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        let rounds = rec["rounds"].as_array().unwrap();
        assert_eq!(rounds.len(), 2, "{name}");
        assert!(rounds.iter().all(|r| r["failures"] == 0 && r["aggregated"].is_array()), "{name}: {rec}");
        assert_eq!(rec["history"]["metrics_distributed"]["accuracy"].as_array().map(Vec::len), Some(2), "{name}");
    }
}

/// With the server's root certificate the client joins a Flower server that serves TLS; without
/// it (plain HTTP/2 to a TLS port), or trusting another CA, it cannot join and says so.
#[test]
fn tls_with_the_servers_root_certificate() {
    let d = dir("tls");
    let o = Command::new(python()).arg(repo().join("crates/smelt-federated/tests/make_certs.py")).arg(&d).output().expect("run python");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let other = d.join("other");
    let o = Command::new(python()).arg(repo().join("crates/smelt-federated/tests/make_certs.py")).arg(&other).output().unwrap();
    assert!(o.status.success());
    let port = free_port();
    let out = d.join("run.json");
    let p = |f: &str| d.join(f).to_str().unwrap().to_string();
    let server = start(&[repo().join("scripts/flower_server.py").to_str().unwrap(), "--address", &format!("127.0.0.1:{port}"), "--clients", "1", "--rounds", "1", "--out", out.to_str().unwrap(), "--certificates", &p("ca.pem"), &p("server.pem"), &p("server.key")]);
    // Refused first: a client that trusts another CA, and one without TLS.
    wait_listening(port);
    let mut wrong = ClientOptions::new(format!("127.0.0.1:{port}"));
    wrong.root_cert = Some(std::fs::read(other.join("ca.pem")).unwrap());
    wrong.connect_for = Duration::from_secs(3);
    let (r, _) = spawn_client(task(10, 0.0), wrong).join().unwrap();
    let e = r.expect_err("a certificate from another CA was accepted").to_string();
    assert!(e.contains("certificate") && e.contains("--root-cert"), "{e}");
    let mut plain = ClientOptions::new(format!("127.0.0.1:{port}"));
    plain.connect_for = Duration::from_secs(3);
    let (r, _) = spawn_client(task(10, 0.0), plain).join().unwrap();
    let e = r.expect_err("plain HTTP/2 joined a TLS server").to_string();
    assert!(e.contains("--root-cert"), "{e}");
    let mut opts = ClientOptions::new(format!("127.0.0.1:{port}"));
    opts.root_cert = Some(std::fs::read(d.join("ca.pem")).unwrap());
    opts.tls_domain = Some("localhost".into());
    let (r, lines) = spawn_client(task(10, 0.0), opts).join().unwrap();
    let err = finish(server);
    let s = r.unwrap_or_else(|e| panic!("{e}\n{lines:#?}\n{err}"));
    assert_eq!(s.exchanges.iter().filter(|x| x.kind == "fit").count(), 1);
}

/// A server that ends the stream mid-run without a goodbye and goes away: the client says so,
/// tries to reconnect for its window, then stops with a clear error (no panic, no hang).
#[test]
fn a_server_that_vanishes_mid_run_is_a_clear_error() {
    let d = dir("vanish");
    let port = free_port();
    let out = d.join("answers.json");
    let server = start(&[repo().join("crates/smelt-federated/tests/malformed_server.py").to_str().unwrap(), &port.to_string(), out.to_str().unwrap(), "0", "close"]);
    // The client's window is short, so wait here until the server listens.
    wait_listening(port);
    let mut opts = ClientOptions::new(format!("127.0.0.1:{port}"));
    opts.connect_for = Duration::from_secs(2);
    let (r, lines) = spawn_client(task(20, 0.0), opts).join().unwrap();
    finish(server);
    let e = r.expect_err("the server is gone");
    assert!(matches!(e, FedError::Unreachable { .. }), "{e}");
    assert!(lines.iter().any(|l| l.contains("get_parameters")), "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains("reconnecting")), "{lines:#?}");
}
