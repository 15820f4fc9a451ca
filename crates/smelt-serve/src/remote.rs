//! The large remote model the router escalates to: any OpenAI-compatible server over HTTP or
//! HTTPS (a second `smelt serve`, llama-server, vLLM, a gateway, a hosted API; TLS in
//! [`crate::tls`]), reached with bounded time at every stage and guarded by a circuit breaker.
//!
//! - Timeouts: connecting, the response headers ("first byte"), and the whole exchange.
//! - Retries: a failed attempt (refused connection, timeout, 5xx, 429) is retried up to
//!   `retries` times while the circuit allows it; a 4xx other than 429 is the request's fault
//!   and is not retried.
//! - Circuit breaker: `failures` consecutive failed exchanges open the circuit; while open,
//!   nothing is sent and the router answers locally; after `cooldown` one probe request is let
//!   through (half-open): its success closes the circuit, its failure opens it again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::Response;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Where the remote is and how to talk to it.
#[derive(Clone, Debug)]
pub struct RemoteConfig {
    /// Host and port (`127.0.0.1:8081`; 80 or 443 when the URL gives none).
    pub authority: String,
    /// The `Host` header: the host (and port) as the URL wrote them.
    pub host_header: String,
    /// TLS settings for an `https://` remote.
    pub tls: Option<crate::tls::Tls>,
    /// The path before `/chat/completions` (`/v1`).
    pub base_path: String,
    /// The model name the remote is asked for.
    pub model: String,
    /// Sent as `Authorization: Bearer KEY`.
    pub key: Option<String>,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub total_timeout: Duration,
    pub retries: u32,
    /// Consecutive failures that open the circuit.
    pub failures: u32,
    pub cooldown: Duration,
    /// Largest response body read from the remote (a whole answer).
    pub max_body: usize,
}

impl RemoteConfig {
    /// Parses `http://host:port/v1` or `https://host/v1` (the system's trusted roots check
    /// the certificate). Defaults for everything else.
    pub fn parse(url: &str, model: &str, key: Option<String>) -> Result<RemoteConfig, String> {
        RemoteConfig::parse_with_ca(url, model, key, None)
    }

    /// [`RemoteConfig::parse`], an `https://` remote's certificate checked against the
    /// certificates of `ca` (a PEM file) instead of the system's roots.
    pub fn parse_with_ca(url: &str, model: &str, key: Option<String>, ca: Option<&std::path::Path>) -> Result<RemoteConfig, String> {
        let (rest, https) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
            (Some(r), _) => (r, false),
            (_, Some(r)) => (r, true),
            _ => return Err(format!("--remote {url}: give an http://HOST:PORT/v1 or https://HOST/v1 address")),
        };
        if ca.is_some() && !https {
            return Err(format!("--remote-ca is for an https:// remote; {url} is plain HTTP"));
        }
        let (host_header, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        // The host without the port (an IPv6 address keeps its brackets here).
        let host = match host_header.rsplit_once(':') {
            Some((h, port)) if !port.contains(']') => {
                if port.parse::<u16>().is_err() {
                    return Err(format!("--remote {url}: {port:?} is not a port"));
                }
                h
            }
            _ => host_header,
        };
        if host.is_empty() {
            return Err(format!("--remote {url}: no host"));
        }
        let authority = if host.len() < host_header.len() { host_header.to_string() } else { format!("{host}:{}", if https { 443 } else { 80 }) };
        let tls = if https { Some(crate::tls::client(host, ca).map_err(|e| format!("--remote {url}: {e}"))?) } else { None };
        let base_path = format!("/{}", path.trim_end_matches('/'));
        let base_path = if base_path == "/" { String::new() } else { base_path };
        Ok(RemoteConfig {
            authority,
            host_header: host_header.to_string(),
            tls,
            base_path,
            model: model.to_string(),
            key,
            connect_timeout: Duration::from_secs(3),
            first_byte_timeout: Duration::from_secs(30),
            total_timeout: Duration::from_secs(300),
            retries: 1,
            failures: 3,
            cooldown: Duration::from_secs(30),
            max_body: 16 << 20,
        })
    }
}

/// Why the remote gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("the remote's circuit is open (it failed recently); answered locally")]
    CircuitOpen,
    #[error("cannot connect to the remote: {0}")]
    Connect(String),
    #[error("the remote timed out ({0})")]
    Timeout(&'static str),
    #[error("the remote answered HTTP {0}")]
    Status(u16, String),
    #[error("the remote's answer is not usable: {0}")]
    BadBody(String),
}

impl RemoteError {
    /// The label for metrics and headers.
    pub fn label(&self) -> &'static str {
        match self {
            RemoteError::CircuitOpen => "circuit_open",
            RemoteError::Connect(_) => "connect",
            RemoteError::Timeout(_) => "timeout",
            RemoteError::Status(s, _) if *s == 429 => "status_429",
            RemoteError::Status(s, _) if *s >= 500 => "status_5xx",
            RemoteError::Status(..) => "status_4xx",
            RemoteError::BadBody(_) => "bad_body",
        }
    }

    /// Whether trying again may help.
    fn retryable(&self) -> bool {
        !matches!(self, RemoteError::Status(s, _) if *s != 429 && *s < 500) && !matches!(self, RemoteError::CircuitOpen)
    }
}

/// Circuit breaker states.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Circuit {
    Closed { failures: u32 },
    Open { until: Instant },
    /// One probe is in flight.
    HalfOpen,
}

impl Circuit {
    /// 0 closed, 1 open, 2 half-open (the `/metrics` gauge).
    pub fn code(&self) -> u8 {
        match self {
            Circuit::Closed { .. } => 0,
            Circuit::Open { .. } => 1,
            Circuit::HalfOpen => 2,
        }
    }
}

/// The remote and its circuit.
pub struct Remote {
    pub cfg: RemoteConfig,
    circuit: Mutex<Circuit>,
    /// Failed attempts by label (`/metrics`).
    pub errors: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    pub tokens: AtomicU64,
}

impl Remote {
    pub fn new(cfg: RemoteConfig) -> Remote {
        Remote { cfg, circuit: Mutex::new(Circuit::Closed { failures: 0 }), errors: Default::default(), tokens: AtomicU64::new(0) }
    }

    pub fn circuit(&self) -> Circuit {
        *self.circuit.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a request may go out now; moves an expired open circuit to half-open (this
    /// caller is the probe).
    fn admit(&self) -> bool {
        let mut c = self.circuit.lock().unwrap_or_else(|p| p.into_inner());
        match *c {
            Circuit::Closed { .. } => true,
            Circuit::Open { until } if Instant::now() >= until => {
                *c = Circuit::HalfOpen;
                true
            }
            Circuit::Open { .. } | Circuit::HalfOpen => false,
        }
    }

    fn record(&self, ok: bool) {
        let mut c = self.circuit.lock().unwrap_or_else(|p| p.into_inner());
        *c = match (*c, ok) {
            (_, true) => Circuit::Closed { failures: 0 },
            (Circuit::Closed { failures }, false) if failures + 1 < self.cfg.failures => Circuit::Closed { failures: failures + 1 },
            (_, false) => Circuit::Open { until: Instant::now() + self.cfg.cooldown },
        };
    }

    fn count_error(&self, e: &RemoteError) {
        *self.errors.lock().unwrap_or_else(|p| p.into_inner()).entry(e.label()).or_insert(0) += 1;
    }

    /// POSTs `body` (with the remote's model name) to `path` under the base path; returns the
    /// response once its headers arrived with status 200. Retries as configured.
    pub async fn post(&self, path: &str, mut body: Value) -> Result<Response<Incoming>, RemoteError> {
        body["model"] = Value::String(self.cfg.model.clone());
        let bytes = Bytes::from(body.to_string());
        let mut last = RemoteError::CircuitOpen;
        for _ in 0..=self.cfg.retries {
            if !self.admit() {
                return Err(last);
            }
            match self.attempt(hyper::Method::POST, path, bytes.clone()).await {
                Ok(r) => {
                    self.record(true);
                    return Ok(r);
                }
                Err(e) => {
                    self.count_error(&e);
                    let again = e.retryable();
                    // A request the remote refuses as malformed says nothing about its health.
                    self.record(!again);
                    last = e;
                    if !again {
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    async fn attempt(&self, method: hyper::Method, path: &str, body: Bytes) -> Result<Response<Incoming>, RemoteError> {
        let c = &self.cfg;
        let stream = tokio::time::timeout(c.connect_timeout, tokio::net::TcpStream::connect(&c.authority))
            .await
            .map_err(|_| RemoteError::Timeout("connect"))?
            .map_err(|e| RemoteError::Connect(e.to_string()))?;
        let mut sender = match &c.tls {
            None => open(stream).await?,
            Some(t) => {
                let tls = tokio::time::timeout(c.connect_timeout, t.connector.connect(t.name.clone(), stream))
                    .await
                    .map_err(|_| RemoteError::Timeout("connect"))?
                    .map_err(|e| RemoteError::Connect(format!("TLS with {} (trusting {}): {e}", c.host_header, t.roots)))?;
                open(tls).await?
            }
        };
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", c.base_path))
            .header("host", &c.host_header)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        if let Some(k) = &c.key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let req = req.body(Full::new(body)).map_err(|e| RemoteError::Connect(e.to_string()))?;
        let resp = tokio::time::timeout(c.first_byte_timeout, sender.send_request(req)).await.map_err(|_| RemoteError::Timeout("first byte"))?.map_err(|e| RemoteError::Connect(e.to_string()))?;
        let status = resp.status().as_u16();
        if status != 200 {
            let text = read_limited(resp.into_body(), 4096, Duration::from_secs(5)).await.map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
            return Err(RemoteError::Status(status, text));
        }
        Ok(resp)
    }

    /// A whole (non-streamed) answer: the body read within the total time and size limits and
    /// checked to be a completion object.
    pub async fn whole(&self, path: &str, body: Value, started: Instant) -> Result<Value, RemoteError> {
        self.fetch(path, body, started, "choices").await
    }

    /// The ids `GET /models` lists (one attempt, no retry).
    pub async fn models(&self) -> Result<Vec<String>, RemoteError> {
        let resp = self.attempt(hyper::Method::GET, "/models", Bytes::new()).await?;
        let bytes = read_limited(resp.into_body(), 1 << 20, self.cfg.total_timeout).await?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| RemoteError::BadBody(format!("GET /models: {e}")))?;
        let ids = v["data"].as_array().map(|a| a.iter().filter_map(|m| m["id"].as_str().map(str::to_string)).collect()).unwrap_or_default();
        Ok(ids)
    }

    /// A whole JSON answer whose `field` must be an array (`choices`, or `data` of embeddings).
    pub async fn fetch(&self, path: &str, body: Value, started: Instant, field: &str) -> Result<Value, RemoteError> {
        let resp = self.post(path, body).await?;
        let left = self.cfg.total_timeout.saturating_sub(started.elapsed());
        let bytes = read_limited(resp.into_body(), self.cfg.max_body, left).await.inspect_err(|e| {
            self.count_error(e);
            self.record(false);
        })?;
        let v: Value = match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) if v[field].is_array() => v,
            Ok(_) | Err(_) => {
                let e = RemoteError::BadBody(format!("the answer is not the object asked for (no JSON, or no `{field}`)"));
                self.count_error(&e);
                self.record(false);
                return Err(e);
            }
        };
        if let Some(n) = v["usage"]["total_tokens"].as_u64() {
            self.tokens.fetch_add(n, Ordering::Relaxed);
        }
        Ok(v)
    }
}

/// An HTTP/1 connection over `io` (a TCP or TLS stream); the connection runs on its own task.
async fn open<IO>(io: IO) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, RemoteError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| RemoteError::Connect(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Reads a body up to `max` bytes within `time`.
pub async fn read_limited(body: Incoming, max: usize, time: Duration) -> Result<Bytes, RemoteError> {
    let collected = tokio::time::timeout(time, Limited::new(body, max).collect()).await.map_err(|_| RemoteError::Timeout("total"))?;
    collected.map(|c| c.to_bytes()).map_err(|e| RemoteError::BadBody(format!("reading the body failed or passed {max} bytes: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_their_default_ports() {
        let c = RemoteConfig::parse("http://127.0.0.1:8081/v1", "big", None).unwrap();
        assert_eq!((c.authority.as_str(), c.host_header.as_str(), c.base_path.as_str()), ("127.0.0.1:8081", "127.0.0.1:8081", "/v1"));
        assert!(c.tls.is_none());
        let c = RemoteConfig::parse("http://gateway/", "big", None).unwrap();
        assert_eq!((c.authority.as_str(), c.host_header.as_str(), c.base_path.as_str()), ("gateway:80", "gateway", ""));
        let c = RemoteConfig::parse("http://[::1]:9/v1", "big", None).unwrap();
        assert_eq!(c.authority, "[::1]:9");
        assert!(RemoteConfig::parse("ftp://x", "m", None).is_err());
        assert!(RemoteConfig::parse("http://host:http/v1", "m", None).unwrap_err().contains("not a port"));
        assert!(RemoteConfig::parse("http:///v1", "m", None).unwrap_err().contains("no host"));
        let err = RemoteConfig::parse_with_ca("http://h/v1", "m", None, Some(std::path::Path::new("ca.pem"))).unwrap_err();
        assert!(err.contains("https"), "{err}");
    }

    #[test]
    fn the_circuit_opens_after_failures_and_probes_after_the_cooldown() {
        let mut cfg = RemoteConfig::parse("http://127.0.0.1:9/v1", "m", None).unwrap();
        cfg.failures = 2;
        cfg.cooldown = Duration::from_millis(50);
        let r = Remote::new(cfg);
        assert!(r.admit());
        r.record(false);
        assert_eq!(r.circuit(), Circuit::Closed { failures: 1 });
        r.record(false);
        assert!(matches!(r.circuit(), Circuit::Open { .. }));
        assert!(!r.admit(), "open: nothing goes out");
        std::thread::sleep(Duration::from_millis(60));
        assert!(r.admit(), "after the cooldown one probe goes out");
        assert_eq!(r.circuit(), Circuit::HalfOpen);
        assert!(!r.admit(), "only one probe at a time");
        r.record(false);
        assert!(matches!(r.circuit(), Circuit::Open { .. }), "a failed probe opens it again");
        std::thread::sleep(Duration::from_millis(60));
        assert!(r.admit());
        r.record(true);
        assert_eq!(r.circuit(), Circuit::Closed { failures: 0 }, "a good probe closes it");
    }
}
