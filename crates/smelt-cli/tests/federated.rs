//! `smelt federated client` as users run it: two clients with real all-MiniLM-L6-v2 embeddings
//! join a real Flower 1.41 server (`scripts/flower_server.py`); the head they bring home
//! classifies with `smelt classify predict`; bad local data and an absent server are clear errors.
//!
//! Needs Python with `flwr==1.41.0` (`SMELT_FLOWER_PYTHON`, set by scripts/test).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use smelt_federated::npy;

mod tiny;

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

/// The labels `smelt classify predict --head HEAD` gives a sport and a tech sentence.
fn predict(head: &Path) -> Vec<String> {
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
    String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["label"].as_str().unwrap().to_string()).collect()
}

/// Starts `scripts/flower_server.py` on `addr` with `args`, recording to `record`.
fn start_server(addr: &str, record: &Path, args: &[&str]) -> Child {
    let python = std::env::var("SMELT_FLOWER_PYTHON").or_else(|_| std::env::var("SMELT_PYTHON")).unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/flower_server.py");
    Command::new(python)
        .args([s(&script), "--address", addr, "--out", s(record)])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the Flower server (flwr 1.41)")
}

/// Waits for the server to end well and returns its record.
fn finish_server(mut server: Child, record: &Path) -> serde_json::Value {
    let status = server.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut server.stderr.take().unwrap(), &mut err).ok();
    assert!(status.success(), "server: {err}");
    serde_json::from_str(&std::fs::read_to_string(record).unwrap()).unwrap()
}

/// Runs `smelt` with each argument list in its own thread, all at once.
fn run_clients(arg_lists: Vec<Vec<String>>) -> Vec<Output> {
    let handles: Vec<_> = arg_lists.into_iter().map(|args| std::thread::spawn(move || smelt(&args.iter().map(String::as_str).collect::<Vec<_>>()))).collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn two_clients_train_a_head_with_a_real_flower_server() {
    let d = dir("run");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let record = d.join("run.json");
    let server = start_server(&addr, &record, &["--clients", "2", "--rounds", "2", "--local-epochs", "20", "--batch-size", "4"]);
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
    let rec = finish_server(server, &record);
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
        assert_eq!(predict(head), ["sport", "tech"]);
    }
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
    // Options of another task, a task without what it needs, a model of the wrong kind.
    for (args, words) in [
        (vec!["--task", "lora", "--labels", LABELS], "--labels does not apply"),
        (vec!["--task", "encoder-layers"], "needs --labels"),
        (vec!["--task", "encoder-layers", "--labels", LABELS, "--dp-clip", "1"], "DP-SGD"),
        (vec!["--task", "lora", "-m", "all-minilm-l6-v2"], "sentence encoder"),
        (vec!["--task", "lora", "--lora-targets", "attn_z"], "attn_z"),
        (vec!["--labels", LABELS, "--init-head", s(&data)], "--init-head does not apply"),
        (vec!["--task", "encoder-layers", "--labels", LABELS, "--init-head", s(&data)], "not a smelt classifier head"),
    ] {
        let mut all = vec!["federated", "client", "-q", "--server", &addr, "--data", s(&data), "--connect-for", "1"];
        all.extend(args);
        let o = smelt(&all);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(words), "{all:?}: {err}");
    }
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

/// Checks every round of a server record made with `--record-values`: each client's parameters
/// as the server's numpy read them start with what that client saved of what it sent (exactly
/// `tensors` tensors, same shapes), and the aggregate is the example-weighted mean of them.
/// Returns what the clients sent, by round then client then tensor.
fn check_weighted_means(rec: &serde_json::Value, sent: &[PathBuf], tensors: usize) -> Vec<Vec<Vec<npy::Tensor>>> {
    let mut all = Vec::new();
    for r in rec["rounds"].as_array().unwrap() {
        let round = r["round"].as_u64().unwrap();
        assert_eq!(r["failures"].as_u64(), Some(0));
        let mine: Vec<Vec<npy::Tensor>> = sent
            .iter()
            .map(|d| {
                assert!(!d.join(format!("fit-{round}-{tensors}.npy")).exists(), "more than {tensors} tensors left {}", d.display());
                (0..tensors).map(|t| npy::decode(&std::fs::read(d.join(format!("fit-{round}-{t}.npy"))).unwrap(), 1 << 26).unwrap()).collect()
            })
            .collect();
        let values = |v: &serde_json::Value| -> Vec<f32> { v["values"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect() };
        let mut weights = vec![0f64; sent.len()];
        for c in r["clients"].as_array().unwrap() {
            let first = values(&c["parameters"][0]);
            let i = mine.iter().position(|m| m[0].data[..first.len()] == first[..]).expect("each client's parameters as it saved them");
            weights[i] = c["num_examples"].as_f64().unwrap();
            for (t, p) in c["parameters"].as_array().unwrap().iter().enumerate() {
                let shape: Vec<usize> = p["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
                assert_eq!(shape, mine[i][t].shape, "tensor {t}");
                assert_eq!(values(p), mine[i][t].data[..values(p).len()], "tensor {t}");
            }
        }
        let total: f64 = weights.iter().sum();
        assert!(weights.iter().all(|&w| w > 0.0), "every client answered round {round}: {weights:?}");
        for t in 0..tensors {
            for (k, a) in values(&r["aggregated"][t]).iter().enumerate() {
                let mean = (0..sent.len()).map(|i| weights[i] * mine[i][t].data[k] as f64).sum::<f64>() / total;
                // Flower sums in float32: a few ulps of the terms (which may cancel).
                let scale = (0..sent.len()).map(|i| weights[i] * (mine[i][t].data[k] as f64).abs()).sum::<f64>() / total;
                assert!((*a as f64 - mean).abs() <= 1e-6 * scale.max(1e-6), "round {round} tensor {t}[{k}]: server {a}, weighted mean {mean}");
            }
        }
        all.push(mine);
    }
    all
}

/// Runs client `i` with `args[i]` and `--save-sent sent[i]` (the first also with
/// `first_extra`) against `server`; asserts every client ended well and returns their outputs
/// and the server's record.
fn federate(server: Child, record: &Path, sent: &[PathBuf], args: Vec<Vec<String>>, first_extra: &[&str]) -> (Vec<Output>, serde_json::Value) {
    let args = args
        .into_iter()
        .enumerate()
        .map(|(i, mut a)| {
            a.extend(["--save-sent".to_string(), s(&sent[i]).to_string()]);
            a.extend(first_extra.iter().filter(|_| i == 0).map(|x| x.to_string()));
            a
        })
        .collect();
    let outs = run_clients(args);
    let rec = finish_server(server, record);
    for o in &outs {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    (outs, rec)
}

fn client_args(addr: &str, extra: &[&str]) -> Vec<String> {
    ["federated", "client", "-q", "--server", addr, "--json"].iter().chain(extra).map(|a| a.to_string()).collect()
}

/// `--task encoder-layers`: the last MiniLM layer and a head travel (18 tensors, nothing else),
/// the server averages them, and the encoder and head brought home classify.
#[test]
fn encoder_layers_travel_and_average_with_a_real_flower_server() {
    let d = dir("layers");
    let addr = format!("127.0.0.1:{}", free_port());
    let record = d.join("run.json");
    let server = start_server(&addr, &record, &["--clients", "2", "--rounds", "2", "--local-epochs", "3", "--batch-size", "4", "--record-values", "64"]);
    let head = d.join("head.json");
    let sent: Vec<PathBuf> = (0..2).map(|i| d.join(format!("sent{i}"))).collect();
    let args = (0..2)
        .map(|i| {
            let data = d.join(format!("c{i}.jsonl"));
            write_data(&data, i, 2);
            client_args(&addr, &["--task", "encoder-layers", "--train-layers", "1", "--max-length", "32", "--lr", "1e-3", "--data", s(&data), "--labels", LABELS])
        })
        .collect();
    let (outs, rec) = federate(server, &record, &sent, args, &["--head-out", s(&head)]);
    let rounds = check_weighted_means(&rec, &sent, 18);
    let first = &rounds[0];
    // One BERT layer (Q, K, V, O, LayerNorms, FFN) and the head: 2 x 384 and 2.
    assert_eq!(first[0][16].shape, [2, 384]);
    assert_eq!(first[0][17].shape, [2]);
    let elements: usize = first[0].iter().map(|t| t.data.len()).sum();
    assert_eq!(elements, 4 * 384 * 384 + 2 * 384 * 1536 + 1536 + 9 * 384 + 2 * 384 + 2);
    // The layer trained: the two clients sent different layer weights.
    assert_ne!(first[0][0].data, first[1][0].data);
    for o in &outs {
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        for x in v["summary"]["exchanges"].as_array().unwrap().iter().filter(|x| x["kind"] == "fit") {
            let out = x["bytes_out"].as_u64().unwrap() as usize;
            assert!(out >= 4 * elements && out < 4 * elements + 65_536, "only the trained tensors travel: {out} bytes for {elements} floats");
        }
    }
    let acc = rec["history"]["metrics_distributed"]["accuracy"][1][1].as_f64().unwrap();
    assert!(acc >= 0.9, "accuracy on the clients' data after two rounds: {acc}");
    assert!(d.join("head.json.encoder/model.safetensors").exists());
    assert_eq!(predict(&head), ["sport", "tech"]);
}

/// `--task lora` on the tiny decoder: only the adapters travel (2 layers x q, v x A, B), the
/// server averages them, the held-out loss falls, and the adapter brought home runs.
#[test]
fn lora_adapters_travel_and_average_with_a_real_flower_server() {
    let d = dir("lora");
    let files = tiny::files(&d, 7);
    let addr = format!("127.0.0.1:{}", free_port());
    let record = d.join("run.json");
    let server = start_server(&addr, &record, &["--clients", "2", "--rounds", "3", "--local-epochs", "1", "--batch-size", "2", "--record-values", "64"]);
    let adapter = d.join("adapter.gguf");
    let sent: Vec<PathBuf> = (0..2).map(|i| d.join(format!("sent{i}"))).collect();
    let texts = ["hello world, the man is playing the guitar. ", "the man is playing, hello the world. "];
    let args = (0..2)
        .map(|i| {
            let data = d.join(format!("c{i}.txt"));
            std::fs::write(&data, texts[i].repeat(60)).unwrap();
            client_args(&addr, &["--task", "lora", "-m", s(&files.gguf), "--data", s(&data), "--lora-rank", "4", "--ctx", "32", "--lr", "3e-2"])
        })
        .collect();
    let (_, rec) = federate(server, &record, &sent, args, &["--adapter-out", s(&adapter)]);
    let rounds = check_weighted_means(&rec, &sent, 8);
    // Per layer: q's A (4 x 32) and B (32 x 4), v's A (4 x 32) and B (16 x 4).
    let shapes: Vec<Vec<usize>> = rounds[0][0].iter().map(|t| t.shape.clone()).collect();
    assert_eq!(shapes.iter().map(|s| s.iter().product::<usize>()).sum::<usize>(), 2 * 4 * (2 * 32 + 32 + 16), "{shapes:?}");
    let losses: Vec<f64> = rec["history"]["losses_distributed"].as_array().unwrap().iter().map(|r| r[1].as_f64().unwrap()).collect();
    assert_eq!(losses.len(), 3);
    assert!(losses[2] < losses[0], "the federated adapters lower the held-out loss: {losses:?}");
    let o = smelt(&["run", "-m", s(&files.gguf), "--lora", s(&adapter), "--raw", "-p", "hello the man", "-n", "8", "--temp", "0", "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
