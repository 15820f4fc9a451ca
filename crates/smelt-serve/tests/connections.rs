//! The server's connections on a real socket: a client that sends its headers or its body too
//! slowly (slow-loris) is cut off within the deadlines, and everyone else is served meanwhile.
//! No model is loaded (`/health` answers 503 "loading", which is all these checks need).

use std::sync::Arc;
use std::time::{Duration, Instant};

use smelt_serve::{AppState, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn server() -> String {
    let limits = Limits { header_timeout: Duration::from_secs(1), body_timeout: Duration::from_secs(1), ..Limits::default() };
    let state = Arc::new(AppState::new("m".into(), None, None, limits));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(smelt_serve::serve(l, state));
    addr
}

/// Everything the server sends until it closes the connection (at most 20 s).
async fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await.expect("the server closes the connection").unwrap_or(0);
    String::from_utf8_lossy(&out).into_owned()
}

async fn health(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
    read_to_close(&mut s).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_others_are_served() {
    let addr = server().await;
    // Headers that never end.
    let mut slow_headers = TcpStream::connect(&addr).await.unwrap();
    slow_headers.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    // A body that never arrives in full.
    let mut slow_body = TcpStream::connect(&addr).await.unwrap();
    slow_body.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"model\":").await.unwrap();
    // Meanwhile another client is answered at once.
    let t = Instant::now();
    let h = health(&addr).await;
    assert!(h.starts_with("HTTP/1.1 503"), "{h}");
    assert!(t.elapsed() < Duration::from_millis(900), "{:?}", t.elapsed());
    let t = Instant::now();
    let got = read_to_close(&mut slow_body).await;
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(got.contains("did not arrive"), "{got}");
    read_to_close(&mut slow_headers).await;
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // Still serving.
    assert!(health(&addr).await.starts_with("HTTP/1.1 503"));
}
