//! `smelt federated client` as users run it: two clients with real all-MiniLM-L6-v2 embeddings
//! join a real Flower 1.41 server (`scripts/flower_server.py`); the head they bring home
//! classifies with `smelt classify predict`; bad local data and an absent server are clear errors.
//!
//! Needs Python with `flwr==1.41.0` (`SMELT_FLOWER_PYTHON`, set by scripts/test).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const LABELS: &str = "sport,tech";

const SPORT: &[&str] = &[
    "The striker scored twice as the home side won the cup final.",
    "She won the marathon in record time despite the heat.",
    "The coach praised his defence after a goalless draw.",
    "A late penalty sent the team through to the semi-finals.",
    "The tennis champion lost in straight sets at Wimbledon.",
    "The rugby squad trained hard before the six nations opener.",
    "Fans cheered as the cyclist crossed the line first.",
    "The goalkeeper saved three shots in the second half.",
];
const TECH: &[&str] = &[
    "The new phone has a faster chip and a brighter screen.",
    "Engineers released a software update that fixes the security flaw.",
    "The start-up builds cloud servers for machine learning.",
    "Broadband speeds rose as fibre reached more homes.",
    "The laptop's battery lasts twelve hours on a charge.",
    "Hackers exploited a bug in the web browser.",
    "The chipmaker unveiled a processor with more cores.",
    "A search engine launched a new app for smartphones.",
];

fn smelt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_smelt")).args(args).stdin(Stdio::null()).output().expect("run smelt")
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("smelt-federated-cli-{}-{name}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// JSON lines of `{"text", "label"}` from every `step`-th sentence starting at `first`.
fn write_data(path: &Path, first: usize, step: usize) {
    let mut s = String::new();
    for (texts, label) in [(SPORT, "sport"), (TECH, "tech")] {
        for t in texts.iter().skip(first).step_by(step) {
            s.push_str(&serde_json::json!({"text": t, "label": label}).to_string());
            s.push('\n');
        }
    }
    std::fs::write(path, s).unwrap();
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn two_clients_train_a_head_with_a_real_flower_server() {
    let d = dir("run");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let record = d.join("run.json");
    let python = std::env::var("SMELT_FLOWER_PYTHON").or_else(|_| std::env::var("SMELT_PYTHON")).unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/flower_server.py");
    let mut server = Command::new(python)
        .args([s(&script), "--address", &addr, "--clients", "2", "--rounds", "2", "--local-epochs", "20", "--batch-size", "4", "--out", s(&record)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the Flower server (flwr 1.41)");
    let clients: Vec<_> = (0..2)
        .map(|i| {
            let data = d.join(format!("c{i}.jsonl"));
            write_data(&data, i, 2);
            let head = d.join(format!("head{i}.json"));
            let args: Vec<String> = ["federated", "client", "-q", "--server", &addr, "--data", s(&data), "--labels", LABELS, "--json", "--head-out", s(&head), "--save-sent", s(&d.join(format!("sent{i}"))), "--dp-clip", "100", "--dp-noise", "0.001"].iter().map(|a| a.to_string()).collect();
            std::thread::spawn(move || (smelt(&args.iter().map(String::as_str).collect::<Vec<_>>()), head))
        })
        .collect();
    let results: Vec<(Output, PathBuf)> = clients.into_iter().map(|h| h.join().unwrap()).collect();
    let status = server.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut server.stderr.take().unwrap(), &mut err).ok();
    assert!(status.success(), "server: {err}");
    for (o, head) in &results {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let ex = v["summary"]["exchanges"].as_array().unwrap();
        assert_eq!(ex.iter().filter(|x| x["kind"] == "fit").count(), 2, "{v}");
        assert!(ex.iter().all(|x| x["refused"].is_null()), "{v}");
        assert!(ex.iter().filter(|x| x["kind"] == "fit").all(|x| x["bytes_out"].as_u64().unwrap() > 4 * 2 * 384), "the head travels: {v}");
        let eps = v["privacy"]["epsilon"].as_f64().unwrap();
        assert!(eps > 1e3, "noise 0.001 is no privacy: epsilon {eps}");
        // The head brought home classifies new sentences with `smelt classify`.
        let o = Command::new(env!("CARGO_BIN_EXE_smelt"))
            .args(["classify", "predict", "-q", "--head", s(head)])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                std::io::Write::write_all(&mut c.stdin.take().unwrap(), b"The midfielder scored a stunning goal.\nThe new tablet runs a faster operating system.\n")?;
                c.wait_with_output()
            })
            .unwrap();
        assert!(o.status.success());
        let labels: Vec<String> = String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["label"].as_str().unwrap().to_string()).collect();
        assert_eq!(labels, ["sport", "tech"]);
    }
    let rec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    let acc = rec["history"]["metrics_distributed"]["accuracy"][1][1].as_f64().unwrap();
    assert!(acc >= 0.9, "federated accuracy on the clients' data after two rounds: {acc}");
}

#[test]
fn bad_local_data_and_an_absent_server_are_clear_errors() {
    let d = dir("bad");
    let data = d.join("data.jsonl");
    let port = free_port().to_string();
    let addr = format!("127.0.0.1:{port}");
    std::fs::write(&data, "{\"text\": \"a goal\", \"label\": \"sport\"}\n{\"text\": \"a recipe\", \"label\": \"cooking\"}\n").unwrap();
    let o = smelt(&["federated", "client", "-q", "--server", &addr, "--data", s(&data), "--labels", LABELS]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("\"cooking\"") && err.contains("--labels"), "{err}");

    std::fs::write(&data, "").unwrap();
    let o = smelt(&["federated", "client", "-q", "--server", &addr, "--data", s(&data), "--labels", LABELS]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("no examples"), "{err}");

    let o = smelt(&["federated", "client", "-q", "--server", &addr, "--data", s(&data), "--labels", "sport"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("at least two"));

    write_data(&data, 0, 4);
    let o = smelt(&["federated", "client", "-q", "--server", &addr, "--data", s(&data), "--labels", LABELS, "--connect-for", "1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("cannot reach the Flower server"), "{err}");
    let o = smelt(&["federated", "client", "-q", "--server", &addr, "--data", s(&data), "--labels", LABELS, "--dp-noise", "1"]);
    assert_eq!(o.status.code(), Some(2), "--dp-noise needs --dp-clip");
}

/// `smelt federated simulate` on a tiny task: a real Flower server and three clients, the report
/// as JSON and HTML with all three curves; bad settings are refused before anything starts.
#[test]
fn simulate_writes_the_three_curves() {
    let d = dir("sim");
    let data = d.join("all.jsonl");
    write_data(&data, 0, 1);
    let html = d.join("fed.html");
    let o = smelt(&["federated", "simulate", "-q", "--data", s(&data), "--test-share", "0.25", "--clients", "3", "--rounds", "2", "--split", "iid", "--batch-size", "4", "--local-epochs", "5", "--json", "-o", s(&html), "--dp-clip", "1", "--dp-epsilon", "50"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v["train_examples"].as_u64(), v["test_examples"].as_u64()), (Some(12), Some(4)));
    let rounds = v["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2);
    for r in rounds {
        for k in ["federated_accuracy", "centralized_accuracy", "local_only_accuracy", "fit_bytes_per_client"] {
            assert!(r[k].as_f64().is_some_and(f64::is_finite), "{k}: {r}");
        }
    }
    assert_eq!(v["client_label_counts"].as_array().unwrap().iter().map(|c| c.as_array().unwrap().iter().map(|n| n.as_u64().unwrap()).sum::<u64>()).sum::<u64>(), 12);
    let eps = v["epsilon"].as_f64().unwrap();
    assert!(eps <= 50.0 + 1e-6 && eps > 10.0, "each client kept within --dp-epsilon: {eps}");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<svg") && page.contains("centralized") && page.contains("local-only"));

    for (args, words) in [
        (vec!["--split", "dirichlet:0"], "dirichlet"),
        (vec!["--malicious", "3:label-flip"], "honest"),
        (vec!["--malicious", "1:poison"], "label-flip"),
        (vec!["--clients", "0"], "clients"),
    ] {
        let mut all = vec!["federated", "simulate", "-q", "--data", s(&data), "--clients", "3"];
        all.extend(args);
        let o = smelt(&all);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(words), "{all:?}: {err}");
    }
}
