//! The router against real remotes on loopback: a second smelt server (SmolLM2 under the name
//! `big`) and a fault-injecting stub (refuses, answers 500, 429 or garbage, stalls before or
//! in the middle of a stream, records what it received). The local server runs in process
//! (tower `oneshot`). Checked: the route header and metrics; private data never reaches the
//! remote (the stub's record); redaction; fallback to the local answer on every failure before
//! the first byte; the circuit opening and closing; a stream that stalls after its first event
//! ends with an error event within the time limit, never a hang.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use smelt_kernels::pool::ThreadPool;
use smelt_models::LoadOptions;
use smelt_serve::engine::{self, EngineConfig};
use smelt_serve::privacy::Detector;
use smelt_serve::remote::{Circuit, Remote, RemoteConfig};
use smelt_serve::router::{Budget, PrivacyMode, Router};
use smelt_serve::{router, AppState, Decoder, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

fn state(id: &str, remote: Option<Router>) -> Arc<AppState> {
    state_ctx(id, remote, 256)
}

fn state_ctx(id: &str, remote: Option<Router>, context: usize) -> Arc<AppState> {
    let (_, loaded) = smelt_models::open("smollm2-135m", LoadOptions::default(), &mut |_| {}).unwrap();
    let mut state = AppState::new(id.into(), None, None, Limits::default());
    state.router = remote;
    let state = Arc::new(state);
    let tok = Arc::new(loaded.tok);
    let cfg = EngineConfig { slots: 2, context, queue: 4 };
    let (engine, _) = engine::start(loaded.model, tok.clone(), ThreadPool::new(2), &cfg, state.metrics.clone(), Arc::new(AtomicBool::new(false))).unwrap();
    assert!(state.decoder.set(Decoder { engine, tok, template: loaded.template }).is_none());
    state
}

/// A router to `addr` with short time limits (the stub's stalls end the test quickly).
fn remote_to(addr: &str, privacy: PrivacyMode) -> Router {
    remote_with(addr, privacy, Duration::from_millis(1500), Duration::from_secs(3))
}

fn remote_with(addr: &str, privacy: PrivacyMode, first_byte: Duration, total: Duration) -> Router {
    let mut cfg = RemoteConfig::parse(&format!("http://{addr}/v1"), "big", None).unwrap();
    cfg.first_byte_timeout = first_byte;
    cfg.total_timeout = total;
    cfg.retries = 0;
    cfg.failures = 2;
    // Long enough that the local answers given meanwhile (slow in a debug build) never outlast it.
    cfg.cooldown = Duration::from_secs(5);
    Router::new(Remote::new(cfg), Detector::default(), privacy, Budget::default())
}

/// How the stub answers.
#[derive(Clone, Copy, Debug)]
enum Mode {
    Status(u16),
    Garbage,
    Stall,
    /// Headers and one SSE event, then nothing.
    StallMidStream,
    /// SSE events without end, as fast as the socket takes them.
    Endless,
    Ok,
}

/// A stub remote on a free port; every request body it receives is recorded.
async fn stub(mode: Arc<Mutex<Mode>>, seen: Arc<Mutex<Vec<String>>>) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(answer(s, mode.clone(), seen.clone()));
        }
    });
    addr
}

/// The stub over TLS, with the certificate `tests/tls/make_certs.py` made for `localhost` and
/// 127.0.0.1; a connection whose handshake fails is dropped before anything is recorded.
async fn tls_stub(mode: Arc<Mutex<Mode>>, seen: Arc<Mutex<Vec<String>>>) -> String {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tls");
    let chain = vec![CertificateDer::from_pem_file(dir.join("server.pem")).unwrap()];
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let (acceptor, mode, seen) = (acceptor.clone(), mode.clone(), seen.clone());
            tokio::spawn(async move {
                if let Ok(s) = acceptor.accept(s).await {
                    answer(s, mode, seen).await;
                }
            });
        }
    });
    addr
}

/// Reads one request from `s`, records its body, answers as `mode` says.
async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S, mode: Arc<Mutex<Mode>>, seen: Arc<Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // Headers, then Content-Length bytes of body.
    loop {
        let n = s.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap())).unwrap_or(0);
            if buf.len() >= end + 4 + len {
                seen.lock().unwrap().push(String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string());
                break;
            }
        }
    }
    let m = *mode.lock().unwrap();
    let reply = |status: u16, ctype: &str, body: &str| format!("HTTP/1.1 {status} X\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
    match m {
        Mode::Status(code) => {
            let _ = s.write_all(reply(code, "application/json", r#"{"error":{"message":"no"}}"#).as_bytes()).await;
        }
        Mode::Garbage => {
            let _ = s.write_all(reply(200, "application/json", "{\"choices\": [tru").as_bytes()).await;
        }
        Mode::Ok => {
            let body = json!({"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "from the stub"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}}).to_string();
            let _ = s.write_all(reply(200, "application/json", &body).as_bytes()).await;
        }
        Mode::Stall => tokio::time::sleep(Duration::from_secs(30)).await,
        Mode::Endless => {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n").await;
            let ev = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"la \"}}]}\n\n".repeat(64);
            let chunk = format!("{:x}\r\n{ev}\r\n", ev.len());
            while s.write_all(chunk.as_bytes()).await.is_ok() {}
        }
        Mode::StallMidStream => {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n").await;
            let ev = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n";
            let _ = s.write_all(format!("{:x}\r\n{ev}\r\n", ev.len()).as_bytes()).await;
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    }
    let _ = s.shutdown().await;
}

async fn chat(state: &Arc<AppState>, content: &str, route: Option<&str>, stream: bool) -> (StatusCode, axum::http::HeaderMap, String) {
    let body = json!({"model": "small", "messages": [{"role": "user", "content": content}], "max_tokens": 6, "temperature": 0, "stream": stream}).to_string();
    let mut req = Request::post("/v1/chat/completions").header("content-type", "application/json");
    if let Some(r) = route {
        req = req.header("x-smelt-route", r);
    }
    let resp = tokio::time::timeout(Duration::from_secs(60), router(state.clone()).oneshot(req.body(Body::from(body)).unwrap())).await.expect("no hang").unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let bytes = tokio::time::timeout(Duration::from_secs(60), resp.into_body().collect()).await.expect("the body ends").unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&bytes).into_owned())
}

fn route(h: &axum::http::HeaderMap) -> String {
    h.get("x-smelt-route").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalation_to_a_second_smelt_server_whole_and_streamed() {
    let big = state_ctx("big", None, 1024);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(smelt_serve::serve(l, big.clone()));
    // A real model answers a 431-token prompt: time limits for a slow test machine.
    let small = state("small", Some(remote_with(&addr, PrivacyMode::Pin, Duration::from_secs(60), Duration::from_secs(120))));
    let (status, h, body) = chat(&small, "Hello there", Some("remote"), false).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(route(&h), "remote; reason=caller");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["model"], "big", "{v}");
    let (status, h, body) = chat(&small, "Hello there", Some("remote"), true).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(route(&h), "remote; reason=caller");
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    assert!(body.contains("\"model\":\"big\""), "{body}");
    // Without the header: local.
    let (_, h, _) = chat(&small, "Hello there", None, false).await;
    assert_eq!(route(&h), "local; reason=default");
    // A prompt longer than the local context goes remote by itself.
    let long = "word ".repeat(400);
    let (status, h, body) = chat(&small, &long, None, false).await;
    assert_eq!(route(&h), "remote; reason=context", "{status} {body}");
    let m = router(small.clone()).oneshot(Request::get("/metrics").body(Body::empty()).unwrap()).await.unwrap();
    let m = String::from_utf8(m.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(m.contains("smelt_route_total{target=\"remote\",reason=\"caller\"} 2"), "{m}");
    assert!(m.contains("smelt_route_total{target=\"remote\",reason=\"context\"} 1"), "{m}");
    assert!(m.contains("smelt_remote_circuit_state 0"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_data_never_reaches_the_remote_and_redaction_replaces_it() {
    let mode = Arc::new(Mutex::new(Mode::Ok));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let addr = stub(mode.clone(), seen.clone()).await;
    let small = state("small", Some(remote_to(&addr, PrivacyMode::Pin)));
    let cases = [
        "My email is jane.doe@example.com, summarise my inbox",
        "Charge card 4111 1111 1111 1111 please",
        "IBAN GB82 WEST 1234 5698 7654 32",
        "SSN 123-45-6789",
        "Call me at +44 20 7946 0958",
        "Use key sk-abcdefghijklmnopqrstuvwxyz0123456789",
        "Ship to 221 Baker Street",
        "password: correct-horse-battery",
    ];
    for c in cases {
        let long = format!("{c} {}", "word ".repeat(400));
        for (text, how) in [(c.to_string(), Some("remote")), (long, None)] {
            let (status, h, _) = chat(&small, &text, how, false).await;
            assert_eq!(route(&h), "local; reason=privacy", "{c}: {status}");
        }
    }
    assert!(seen.lock().unwrap().is_empty(), "the remote received {:?}", seen.lock().unwrap());
    // Redact mode: the remote gets placeholders, never the data.
    let small = state("small", Some(remote_to(&addr, PrivacyMode::Redact)));
    let (status, h, body) = chat(&small, "Mail jane.doe@example.com about card 4111111111111111", Some("remote"), false).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(route(&h), "remote; reason=caller; redacted");
    let got = seen.lock().unwrap().concat();
    assert!(got.contains("[EMAIL]") && got.contains("[CARD_NUMBER]"), "{got}");
    assert!(!got.contains("jane.doe") && !got.contains("4111111111111111"), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_remote_failure_falls_back_and_the_circuit_opens_and_closes() {
    let mode = Arc::new(Mutex::new(Mode::Status(500)));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let addr = stub(mode.clone(), seen.clone()).await;
    let small = state("small", Some(remote_to(&addr, PrivacyMode::Pin)));
    let fallback = |h: &axum::http::HeaderMap| h.get("x-smelt-fallback").map(|v| v.to_str().unwrap().to_string());
    for (m, label) in [(Mode::Status(500), "status_5xx"), (Mode::Status(429), "status_429")] {
        // Fresh circuit for each kind: wait out the cooldown and let a good probe close it.
        *mode.lock().unwrap() = m;
        let (status, h, body) = chat(&small, "hi", Some("remote"), false).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(fallback(&h).as_deref(), Some(label));
        assert!(route(&h).starts_with("local"), "{}", route(&h));
        let (_, h, _) = chat(&small, "hi", Some("remote"), false).await;
        assert_eq!(fallback(&h).as_deref(), Some(label));
        // Two failures: open. Nothing is sent while open.
        assert!(matches!(small.router.as_ref().unwrap().remote.circuit(), Circuit::Open { .. }));
        let before = seen.lock().unwrap().len();
        let (_, h, _) = chat(&small, "hi", Some("remote"), false).await;
        assert_eq!(route(&h), "local; reason=circuit_open");
        assert_eq!(seen.lock().unwrap().len(), before);
        // After the cooldown a good probe closes it.
        tokio::time::sleep(Duration::from_millis(5100)).await;
        *mode.lock().unwrap() = Mode::Ok;
        let (_, h, body) = chat(&small, "hi", Some("remote"), false).await;
        assert_eq!(route(&h), "remote; reason=caller", "{body}");
        assert!(body.contains("from the stub"));
        assert_eq!(small.router.as_ref().unwrap().remote.circuit(), Circuit::Closed { failures: 0 });
    }
    for (m, label, stream) in [(Mode::Garbage, "bad_body", false), (Mode::Stall, "timeout", false), (Mode::Stall, "timeout", true)] {
        *mode.lock().unwrap() = m;
        let t = std::time::Instant::now();
        let (status, h, _) = chat(&small, "hi", Some("remote"), stream).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(fallback(&h).as_deref(), Some(label), "{m:?}");
        assert!(t.elapsed() < Duration::from_secs(20), "{m:?} took {:?}", t.elapsed());
        // One failure leaves the circuit closed (it opens at 2); a success resets the count.
        assert!(matches!(small.router.as_ref().unwrap().remote.circuit(), Circuit::Closed { failures: 1 }));
        *mode.lock().unwrap() = Mode::Ok;
        chat(&small, "hi", Some("remote"), false).await;
    }
    // Refused connections (nothing listens on the port).
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().to_string();
    let lonely = state("small", Some(remote_to(&closed, PrivacyMode::Pin)));
    let (status, h, _) = chat(&lonely, "hi", Some("remote"), false).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fallback(&h).as_deref(), Some("connect"));
    // A stream that stalls after its first event: too late to fall back; it ends with an error
    // event within the total time limit.
    *mode.lock().unwrap() = Mode::StallMidStream;
    let t = std::time::Instant::now();
    let (status, h, body) = chat(&small, "hi", Some("remote"), true).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(route(&h), "remote; reason=caller");
    assert!(body.contains("Hel") && body.contains("remote_failed") && body.trim_end().ends_with("data: [DONE]"), "{body}");
    assert!(t.elapsed() < Duration::from_secs(10));
    // A stream that never ends: cut at the size limit (here 1 MiB) or the total time, whichever
    // comes first, with an error event; the client's body stays bounded.
    let mut cfg = RemoteConfig::parse(&format!("http://{addr}/v1"), "big", None).unwrap();
    (cfg.total_timeout, cfg.retries, cfg.max_body) = (Duration::from_secs(3), 0, 1 << 20);
    let capped = state("small", Some(Router::new(Remote::new(cfg), Detector::default(), PrivacyMode::Pin, Budget::default())));
    *mode.lock().unwrap() = Mode::Endless;
    let t = std::time::Instant::now();
    let (status, _, body) = chat(&capped, "hi", Some("remote"), true).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("remote_failed") && body.trim_end().ends_with("data: [DONE]"), "{}", &body[body.len().saturating_sub(300)..]);
    assert!(body.len() < (1 << 20) + 4096, "{} bytes", body.len());
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_remote_is_reached_only_with_a_certificate_it_can_check() {
    let mode = Arc::new(Mutex::new(Mode::Ok));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let addr = tls_stub(mode.clone(), seen.clone()).await;
    let port = addr.rsplit(':').next().unwrap().to_string();
    let certs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tls");
    let https = |host: &str, ca: &str| {
        let mut cfg = RemoteConfig::parse_with_ca(&format!("https://{host}:{port}/v1"), "big", Some("key".into()), Some(&certs.join(ca))).unwrap();
        (cfg.retries, cfg.failures, cfg.first_byte_timeout) = (0, 5, Duration::from_secs(10));
        Router::new(Remote::new(cfg), Detector::default(), PrivacyMode::Pin, Budget::default())
    };
    // The authority that signed the server's certificate, the server by name and by address.
    for host in ["localhost", "127.0.0.1"] {
        let small = state("small", Some(https(host, "ca.pem")));
        let (status, h, body) = chat(&small, "hi", Some("remote"), false).await;
        assert_eq!((status, route(&h).as_str()), (StatusCode::OK, "remote; reason=caller"), "{host}: {body}");
        assert!(body.contains("from the stub"), "{body}");
    }
    assert_eq!(seen.lock().unwrap().len(), 2, "both requests went over TLS");
    // Someone else's authority: the handshake fails, nothing is sent, the local model answers.
    let small = state("small", Some(https("localhost", "other-ca.pem")));
    let (status, h, body) = chat(&small, "hi", Some("remote"), false).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(route(&h).starts_with("local"), "{}", route(&h));
    assert_eq!(h.get("x-smelt-fallback").map(|v| v.to_str().unwrap()), Some("connect"));
    assert_eq!(seen.lock().unwrap().len(), 2, "nothing reached a server whose certificate did not check");
    // The settings refuse what cannot work before anything runs.
    assert!(RemoteConfig::parse_with_ca("https://localhost/v1", "m", None, Some(&certs.join("server.key"))).unwrap_err().contains("no usable certificate"));
    assert!(RemoteConfig::parse_with_ca(&format!("http://127.0.0.1:{port}/v1"), "m", None, Some(&certs.join("ca.pem"))).is_err());
}

/// A head whose `p(remote)` is `sigmoid(bias)` for every text (zero weights): it tests the
/// wiring of the complexity signal, not a classifier.
fn constant_head(dim: usize, remote_bias: f32) -> smelt_models::classify::Head {
    smelt_models::classify::Head {
        format: smelt_models::classify::HEAD_FORMAT.into(),
        version: smelt_models::classify::HEAD_VERSION,
        encoder: "all-minilm-l6-v2".into(),
        int8: false,
        dim,
        labels: vec!["local".into(), "remote".into()],
        weights: vec![vec![0.0; dim]; 2],
        bias: vec![0.0, remote_bias],
        l2: 0.0,
        train_examples: 0,
        iterations: 0,
        final_loss: 0.0,
    }
}

/// The text of a chat answer, whole or streamed.
fn answer_text(body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        return v["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_string();
    }
    body.lines().filter_map(|l| l.strip_prefix("data: ")).filter(|d| *d != "[DONE]").filter_map(|d| serde_json::from_str::<Value>(d).ok()).filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_string)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_confidence_gate_and_the_complexity_signal_escalate_before_anything_is_sent() {
    use smelt_serve::engine::Gate;
    let mode = Arc::new(Mutex::new(Mode::Ok));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let addr = stub(mode.clone(), seen.clone()).await;
    // A gate no draft passes (a mean log-probability of 0 needs every token certain).
    let never = Gate { tokens: 3, min_mean_logprob: 0.0, min_top1: 0.0 };
    let unsure = state("small", Some(remote_to(&addr, PrivacyMode::Pin).with_signals(None, Some(never))));
    let (status, h, body) = chat(&unsure, "Tell me a story", None, false).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(route(&h), "remote; reason=confidence");
    assert!(body.contains("from the stub"), "{body}");
    // Streamed: the stub answers JSON, not events, so the escalation fails before the first
    // byte and the local model answers in full (the dropped draft is generated again).
    let (status, h, body) = chat(&unsure, "Tell me a story", None, true).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(route(&h), "local; reason=confidence");
    assert_eq!(h.get("x-smelt-fallback").unwrap(), "bad_body");
    assert!(body.trim_end().ends_with("data: [DONE]") && !answer_text(&body).is_empty(), "{body}");
    // Private data is pinned before any draft.
    let (_, h, _) = chat(&unsure, "Mail jane.doe@example.com", None, false).await;
    assert_eq!(route(&h), "local; reason=privacy");
    assert_eq!(seen.lock().unwrap().len(), 2);

    // A gate every draft passes: the held tokens follow in order, the same answer as ungated.
    let always = Gate { tokens: 3, min_mean_logprob: -1e9, min_top1: 0.0 };
    let sure = state("small", Some(remote_to(&addr, PrivacyMode::Pin).with_signals(None, Some(always))));
    for stream in [false, true] {
        let (_, h, gated) = chat(&sure, "Name three colours", None, stream).await;
        assert_eq!(route(&h), "local; reason=default");
        let (_, _, plain) = chat(&sure, "Name three colours", Some("local"), stream).await;
        assert_eq!(answer_text(&gated), answer_text(&plain), "stream {stream}");
        assert!(!answer_text(&gated).is_empty());
    }
    let m = router(sure.clone()).oneshot(Request::get("/metrics").body(Body::empty()).unwrap()).await.unwrap();
    let m = String::from_utf8(m.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(m.contains("smelt_confidence_total{outcome=\"confident\"} 2"), "{m}");
    assert_eq!(seen.lock().unwrap().len(), 2, "nothing more went to the remote");

    // The complexity signal, on the real encoder's embedding: p(remote) = sigmoid(3) = 0.95.
    let path = smelt_assets::resolve_model("all-minilm-l6-v2", &mut |_| {}).unwrap();
    for (threshold, want) in [(0.9, "remote; reason=complexity"), (0.99, "local; reason=default")] {
        let enc = smelt_models::Encoder::load(&path, None).unwrap();
        let cx = smelt_serve::router::Complexity::new(constant_head(enc.dim(), 3.0), threshold).unwrap();
        let st = state("small", Some(remote_to(&addr, PrivacyMode::Pin).with_signals(Some(cx), None)));
        assert!(st.embedder.set(smelt_serve::embeddings::start(enc, ThreadPool::new(1), 4).unwrap()).is_ok());
        let (status, h, body) = chat(&st, "Prove the Riemann hypothesis", None, false).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(route(&h), want);
    }
    let head = constant_head(4, 0.0);
    let mut bad = head.clone();
    bad.labels = vec!["easy".into(), "hard".into()];
    assert!(smelt_serve::router::Complexity::new(bad, 0.5).unwrap_err().contains("remote"));
}

/// `smelt route eval`'s collection against a real server on loopback (the same server as local
/// and remote): both answers graded alike, and the confidence statistics it derives from the
/// API's log-probabilities are the ones the engine's gate computes for the same request. One
/// request at a time: with quantized weights, a token's logits depend slightly on the rows its
/// step holds (sums in another order flip an occasional 8-bit rounding of the activations, which
/// grows through the layers; llama.cpp's batches behave alike), so batched requests may differ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_eval_measures_what_the_gate_judges() {
    use smelt_serve::engine::{Event, Gate, GenRequest};
    use smelt_serve::route_eval::{self, CollectOptions, Item};
    let st = state("small", None);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", l.local_addr().unwrap());
    tokio::spawn(smelt_serve::serve(l, st.clone()));
    let items: Vec<Item> = [("The capital of France is", "Paris"), ("One, two, three, four,", "five")].iter().map(|(p, a)| serde_json::from_value(json!({"prompt": p, "answer": a})).unwrap()).collect();
    let o = CollectOptions { local: url.clone(), remote: Some(url), complexity: None, max_tokens: 3, concurrency: 1 };
    let records = route_eval::collect(&items, &o, &|| {}).await.unwrap();
    assert_eq!(records.len(), 2);
    for (r, item) in records.iter().zip(&items) {
        assert_eq!(Some(&r.local), r.remote.as_ref(), "one model, greedy: the same answer");
        assert_eq!(r.local_ok, route_eval::grade(&r.local, &item.answer));
        assert_eq!(r.steps.len(), 3, "{r:?}");
        assert!(r.steps.iter().all(|s| s[0] <= 0.0 && s[1] <= 0.0 && s[0] <= s[1] + 1e-6), "{r:?}");
        // The engine's own verdict on the same request.
        let dec = st.decoder.get().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let gate = Gate { tokens: 2, min_mean_logprob: -1e9, min_top1: 0.0 };
        let req = GenRequest { prompt: dec.tok.encode(item.prompt.as_deref().unwrap(), true), max_tokens: 3, stop: vec![], sampler: smelt_models::SamplerConfig::greedy(), logprobs: None, ignore_eos: false, deadline: None, events: tx, enqueued: std::time::Instant::now(), gate: Some(gate), note: Default::default() };
        dec.engine.submit(req, &st.metrics).unwrap();
        let Some(Event::Confidence { confidence, pass: true }) = rx.recv().await else { panic!("the verdict comes first") };
        let (n, mean, top1) = route_eval::draft_confidence(&r.steps, 2);
        assert_eq!(confidence.tokens, n);
        assert!((confidence.mean_logprob - mean).abs() < 1e-4, "{confidence:?} vs {mean}");
        assert!((confidence.min_top1 - top1).abs() < 1e-4, "{confidence:?} vs {top1}");
    }
}
