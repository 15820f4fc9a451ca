//! The Flower client: joins a server's legacy bidirectional stream
//! (`flwr.proto.FlowerService/Join`) and answers its instructions with a [`Trainable`].
//!
//! The protocol: the client opens the stream and waits; the server sends one `ServerMessage`
//! (get parameters, fit, evaluate, get properties, reconnect) and waits for the matching
//! `ClientMessage`. A `ReconnectIns` with `seconds > 0` asks the client to leave and come back
//! after that long; with `0` (what a server sends when its run is over) to leave for good.
//!
//! Nothing the server sends is executed: tensors must be NPY float arrays of exactly this
//! client's shapes, finite, with a norm below [`ClientOptions::max_norm`]; config values are
//! typed ([`FitConfig`]); a message over [`ClientOptions::max_message_bytes`] ends the stream.
//! A refused instruction is answered with a non-OK status (the server counts a failure) and the
//! client stays connected. With a root certificate the stream runs over TLS (rustls), as with
//! Flower's `start_server(certificates=...)`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::config::{round_of, FitConfig};
use crate::npy::{self, Tensor};
use crate::privacy::UpdatePrivacy;
use crate::proto::client_message::{self as cm, Msg as Out};
use crate::proto::flower_service_client::FlowerServiceClient;
use crate::proto::server_message::Msg as In;
use crate::proto::{scalar, ClientMessage, Code, Parameters, Reason, Scalar, ServerMessage, Status};
use crate::trainable::{Outcome, Trainable};
use crate::FedError;

/// The tensor encoding this client reads and writes.
pub const TENSOR_TYPE: &str = "numpy.ndarray";

/// How the client connects and what it accepts.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// The server's `HOST:PORT`.
    pub server: String,
    /// How long to keep trying to reach the server (at the start and after a dropped stream).
    pub connect_for: Duration,
    /// The largest message accepted (and sent), in bytes.
    pub max_message_bytes: usize,
    /// The largest L2 norm of all parameters together that the server may send.
    pub max_norm: f64,
    /// Seeds the order of the local examples (and the privacy noise).
    pub seed: u64,
    /// Clip the update and add Gaussian noise before it leaves (client-level privacy).
    pub privacy: Option<UpdatePrivacy>,
    /// Write every parameter set sent to the server here (`fit-R-T.npy`), to audit what left.
    pub save_sent: Option<PathBuf>,
    /// Connect with TLS, trusting this root certificate (PEM bytes, what Flower calls
    /// `root_certificates`).
    pub root_cert: Option<Vec<u8>>,
    /// The name the server's certificate must carry (default: the host of `server`).
    pub tls_domain: Option<String>,
}

impl ClientOptions {
    pub fn new(server: impl Into<String>) -> ClientOptions {
        ClientOptions { server: server.into(), connect_for: Duration::from_secs(60), max_message_bytes: 64 << 20, max_norm: 1e6, seed: 0, privacy: None, save_sent: None, root_cert: None, tls_domain: None }
    }
}

/// One answered (or refused) instruction.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Exchange {
    /// `get_parameters`, `get_properties`, `fit` or `evaluate`.
    pub kind: &'static str,
    /// The server's round when its config names it, else the count of fits so far.
    pub round: u64,
    pub num_examples: usize,
    pub loss: Option<f64>,
    pub metrics: std::collections::BTreeMap<String, f64>,
    /// Wire sizes of the instruction and the answer.
    pub bytes_in: usize,
    pub bytes_out: usize,
    pub seconds: f64,
    /// CPU seconds of the thread that answered (training and encoding; the network aside).
    /// Tasks that train on a thread pool (encoder layers, LoRA) also use its workers: see
    /// `process_cpu_seconds`.
    pub cpu_seconds: f64,
    /// CPU seconds of the whole process over the exchange (pool workers included; clients that
    /// share a process, as in a simulation, are counted together).
    pub process_cpu_seconds: f64,
    /// Why the instruction was refused, if it was.
    pub refused: Option<String>,
    /// The update's norm before clipping, when privacy is on.
    pub update_norm: Option<f64>,
}

/// What a client did over its whole run.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Summary {
    pub exchanges: Vec<Exchange>,
    pub connections: usize,
    /// How the run ended.
    pub ended: String,
}

/// Joins the server and answers it until it says goodbye. `log` gets one line per event.
pub async fn run(task: &mut dyn Trainable, opts: &ClientOptions, log: &mut (dyn FnMut(&str) + Send)) -> Result<Summary, FedError> {
    let mut summary = Summary::default();
    let mut state = State { fits: 0, warned: Vec::new(), rng_seed: opts.seed };
    // Since when joins have been failing (the same window as connecting).
    let mut failing_since: Option<Instant> = None;
    loop {
        let channel = connect(opts, log).await?;
        summary.connections += 1;
        let mut client = FlowerServiceClient::new(channel).max_decoding_message_size(opts.max_message_bytes).max_encoding_message_size(opts.max_message_bytes);
        let (tx, rx) = mpsc::channel::<ClientMessage>(2);
        let mut inbound = match client.join(ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= opts.connect_for {
                    return Err(unreachable(opts, format!("the stream could not start ({}), for {:.0} s", s.message(), since.elapsed().as_secs_f64())));
                }
                log(&format!("the server refused the stream ({}): retrying", s.message()));
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        failing_since = None;
        log(&format!("joined {}", opts.server));
        let ended = loop {
            let msg = match inbound.message().await {
                Ok(Some(m)) => m,
                Ok(None) => break None,
                Err(s) if s.code() == tonic::Code::OutOfRange || s.code() == tonic::Code::ResourceExhausted => {
                    return Err(FedError::Stream(format!("the server sent a message over the {} byte limit ({}); raise --max-message-mb if that is expected", opts.max_message_bytes, s.message())));
                }
                Err(s) => break Some(s),
            };
            let (reply, leave) = tokio::task::block_in_place(|| answer(task, opts, &mut state, msg, &mut summary, log));
            if let Some(reply) = reply {
                if tx.send(reply).await.is_err() {
                    break None;
                }
            }
            if let Some(seconds) = leave {
                drop(tx);
                if seconds == 0 {
                    summary.ended = "the server ended the run".into();
                    log("the server ended the run: leaving");
                    return Ok(summary);
                }
                log(&format!("the server asked to reconnect in {seconds} s"));
                tokio::time::sleep(Duration::from_secs(seconds.min(3600))).await;
                break Some(tonic::Status::ok("reconnect"));
            }
        };
        match ended {
            Some(s) if s.code() == tonic::Code::Ok => {}
            Some(s) => log(&format!("the stream failed ({:?}: {}): reconnecting", s.code(), s.message())),
            None => log("the server closed the stream without a goodbye: reconnecting"),
        }
    }
}

struct State {
    fits: u64,
    warned: Vec<String>,
    rng_seed: u64,
}

/// The error for a server that cannot be joined, with the likeliest fix.
fn unreachable(opts: &ClientOptions, why: String) -> FedError {
    let hint = if why.contains("certificate") || why.contains("tls") || why.contains("TLS") {
        "check --root-cert (the CA that signed the server's certificate) and --tls-domain (a name the certificate carries)"
    } else if opts.root_cert.is_none() && why.contains("stream") {
        "if the server uses TLS, give its root certificate with --root-cert"
    } else {
        "is it started, and is the address HOST:PORT?"
    };
    FedError::Unreachable { server: opts.server.clone(), why, hint }
}

/// Connects, retrying with backoff (0.2 s doubling to 5 s) for `opts.connect_for`.
async fn connect(opts: &ClientOptions, log: &mut (dyn FnMut(&str) + Send)) -> Result<Channel, FedError> {
    let unreachable = |why: String| unreachable(opts, why);
    let scheme = if opts.root_cert.is_some() { "https" } else { "http" };
    let uri = if opts.server.contains("://") { opts.server.clone() } else { format!("{scheme}://{}", opts.server) };
    let mut endpoint = Endpoint::from_shared(uri).map_err(|e| unreachable(format!("not an address: {e}")))?.connect_timeout(Duration::from_secs(5));
    if let Some(pem) = &opts.root_cert {
        let host = opts.server.rsplit_once(':').map_or(opts.server.as_str(), |(h, _)| h).trim_start_matches("https://").trim_matches(['[', ']']);
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)).domain_name(opts.tls_domain.clone().unwrap_or_else(|| host.to_string()));
        endpoint = endpoint.tls_config(tls).map_err(|e| unreachable(format!("TLS settings: {e}")))?;
    }
    let start = Instant::now();
    let mut wait = Duration::from_millis(200);
    let mut said = false;
    loop {
        match endpoint.connect().await {
            Ok(ch) => return Ok(ch),
            Err(e) => {
                let why = std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
                if start.elapsed() + wait > opts.connect_for {
                    return Err(unreachable(format!("{why}, for {:.0} s", start.elapsed().as_secs_f64())));
                }
                if !said {
                    log(&format!("waiting for the server at {} ({why})", opts.server));
                    said = true;
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn ok() -> Option<Status> {
    Some(Status { code: Code::Ok as i32, message: "Success".into() })
}

fn refused(code: Code, why: &str) -> Option<Status> {
    Some(Status { code: code as i32, message: format!("refused by the smelt client: {why}") })
}

fn metrics(m: &[(String, f64)]) -> HashMap<String, Scalar> {
    m.iter().map(|(k, v)| (k.clone(), Scalar { scalar: Some(scalar::Scalar::Double(*v)) })).collect()
}

fn parameters(ts: &[Tensor]) -> Option<Parameters> {
    Some(Parameters { tensors: ts.iter().map(npy::encode).collect(), tensor_type: TENSOR_TYPE.into() })
}

/// The server's parameters, checked against the task's shapes, finiteness and the norm bound.
pub fn check(p: Option<&Parameters>, shapes: &[Vec<usize>], max_norm: f64) -> Result<Vec<Tensor>, FedError> {
    let bad = |why: String| FedError::Parameters(why);
    let p = p.ok_or_else(|| bad("the instruction carries no parameters".into()))?;
    if p.tensor_type != TENSOR_TYPE {
        return Err(bad(format!("tensor type {:?}; this client reads {TENSOR_TYPE:?} (NPY bytes)", p.tensor_type)));
    }
    if p.tensors.len() != shapes.len() {
        return Err(bad(format!("{} tensors; this task has {} ({shapes:?})", p.tensors.len(), shapes.len())));
    }
    let mut out = Vec::with_capacity(shapes.len());
    for (i, (bytes, shape)) in p.tensors.iter().zip(shapes).enumerate() {
        let t = npy::decode(bytes, shape.iter().product()).map_err(|e| bad(format!("tensor {i}: {e}")))?;
        if &t.shape != shape {
            return Err(bad(format!("tensor {i} has shape {:?}; this task's is {shape:?}", t.shape)));
        }
        if let Some(j) = t.data.iter().position(|v| !v.is_finite()) {
            return Err(bad(format!("tensor {i} holds a non-finite value ({}) at element {j}", t.data[j])));
        }
        out.push(t);
    }
    let norm = out.iter().flat_map(|t| &t.data).map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
    if norm > max_norm {
        return Err(bad(format!("their norm {norm:.3e} is over the {max_norm:.1e} this client accepts")));
    }
    Ok(out)
}

/// Answers one instruction: the reply, and `Some(seconds)` when the client must leave.
fn answer(task: &mut dyn Trainable, opts: &ClientOptions, state: &mut State, msg: ServerMessage, summary: &mut Summary, log: &mut (dyn FnMut(&str) + Send)) -> (Option<ClientMessage>, Option<u64>) {
    let bytes_in = msg.encoded_len();
    let (t0, cpu0, proc0) = (Instant::now(), smelt_eval::energy::thread_cpu_seconds(), smelt_eval::energy::cpu_seconds());
    let mut x = Exchange { kind: "", round: state.fits, num_examples: 0, loss: None, metrics: Default::default(), bytes_in, bytes_out: 0, seconds: 0.0, cpu_seconds: 0.0, process_cpu_seconds: 0.0, refused: None, update_norm: None };
    let out = match msg.msg {
        Some(In::ReconnectIns(r)) => {
            let seconds = r.seconds.max(0) as u64;
            let reason = if seconds > 0 { Reason::Reconnect } else { Reason::Ack };
            return (Some(ClientMessage { msg: Some(Out::DisconnectRes(cm::DisconnectRes { reason: reason as i32 })) }), Some(seconds));
        }
        Some(In::GetPropertiesIns(_)) => {
            x.kind = "get_properties";
            let props = [("task".to_string(), Scalar { scalar: Some(scalar::Scalar::String(task.describe())) })].into();
            Out::GetPropertiesRes(cm::GetPropertiesRes { status: ok(), properties: props })
        }
        Some(In::GetParametersIns(_)) => {
            x.kind = "get_parameters";
            Out::GetParametersRes(cm::GetParametersRes { status: ok(), parameters: parameters(&task.get()) })
        }
        Some(In::FitIns(ins)) => {
            x.kind = "fit";
            state.fits += 1;
            let res = fit(task, opts, state, ins.parameters.as_ref(), &ins.config, &mut x, log);
            Out::FitRes(res)
        }
        Some(In::EvaluateIns(ins)) => {
            x.kind = "evaluate";
            x.round = round_of(&ins.config).unwrap_or(state.fits);
            let res = check(ins.parameters.as_ref(), &task.shapes(), opts.max_norm).and_then(|p| {
                task.set(&p);
                task.evaluate()
            });
            match res {
                Ok(o) => {
                    record(&mut x, &o);
                    Out::EvaluateRes(cm::EvaluateRes { status: ok(), loss: o.loss as f32, num_examples: o.num_examples as i64, metrics: metrics(&o.metrics) })
                }
                Err(e) => {
                    x.refused = Some(e.to_string());
                    Out::EvaluateRes(cm::EvaluateRes { status: refused(Code::EvaluateNotImplemented, &e.to_string()), ..Default::default() })
                }
            }
        }
        None => {
            log("the server sent an empty instruction: ignored");
            return (None, None);
        }
    };
    let reply = ClientMessage { msg: Some(out) };
    x.bytes_out = reply.encoded_len();
    x.seconds = t0.elapsed().as_secs_f64();
    x.cpu_seconds = smelt_eval::energy::thread_cpu_seconds() - cpu0;
    x.process_cpu_seconds = smelt_eval::energy::cpu_seconds() - proc0;
    match &x.refused {
        Some(why) => log(&format!("{} refused: {why}", x.kind)),
        None => log(&format!(
            "{} round {}: {} examples{}{}, {:.2} s, {} B in, {} B out",
            x.kind,
            x.round,
            x.num_examples,
            x.loss.map_or(String::new(), |l| format!(", loss {l:.4}")),
            x.metrics.get("accuracy").map_or(String::new(), |a| format!(", accuracy {a:.4}")),
            x.seconds,
            x.bytes_in,
            x.bytes_out
        )),
    }
    summary.exchanges.push(x);
    (Some(reply), None)
}

fn record(x: &mut Exchange, o: &Outcome) {
    x.num_examples = o.num_examples;
    x.loss = Some(o.loss);
    x.metrics = o.metrics.iter().cloned().collect();
}

/// A fit instruction: config and parameters checked, local training, privacy, the answer.
fn fit(task: &mut dyn Trainable, opts: &ClientOptions, state: &mut State, params: Option<&Parameters>, config: &HashMap<String, Scalar>, x: &mut Exchange, log: &mut (dyn FnMut(&str) + Send)) -> cm::FitRes {
    let refuse = |x: &mut Exchange, e: FedError| {
        x.refused = Some(e.to_string());
        cm::FitRes { status: refused(Code::FitNotImplemented, &e.to_string()), ..Default::default() }
    };
    let (cfg, unknown) = match FitConfig::parse(config) {
        Ok(c) => c,
        Err(e) => return refuse(x, e),
    };
    for key in unknown {
        if !state.warned.contains(&key) {
            log(&format!("fit config key {key:?} is not one this client uses: ignored"));
            state.warned.push(key);
        }
    }
    x.round = cfg.round.unwrap_or(state.fits);
    let start = match check(params, &task.shapes(), opts.max_norm) {
        Ok(p) => p,
        Err(e) => return refuse(x, e),
    };
    task.set(&start);
    let seed = state.rng_seed.wrapping_add(state.fits.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let outcome = match task.fit(&cfg, seed) {
        Ok(o) => o,
        Err(e) => return refuse(x, e),
    };
    let mut sent = task.get();
    if let Some(p) = &opts.privacy {
        x.update_norm = Some(p.apply(&start, &mut sent, seed));
        task.set(&sent);
    }
    record(x, &outcome);
    if let Some(dir) = &opts.save_sent {
        for (i, t) in sent.iter().enumerate() {
            let path = dir.join(format!("fit-{}-{i}.npy", x.round));
            if let Err(e) = smelt_formats::fsutil::write_atomic_io(&path, |w: &mut std::io::BufWriter<std::fs::File>| std::io::Write::write_all(w, &npy::encode(t))) {
                log(&format!("could not save {}: {e}", path.display()));
            }
        }
    }
    cm::FitRes { status: ok(), parameters: parameters(&sent), num_examples: outcome.num_examples as i64, metrics: metrics(&outcome.metrics) }
}

/// [`run`] on a runtime of its own (one worker thread: the training runs on it), for callers
/// that are not async.
pub fn run_blocking(task: &mut dyn Trainable, opts: &ClientOptions, log: &mut (dyn FnMut(&str) + Send)) -> Result<Summary, FedError> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().map_err(|e| FedError::Stream(format!("cannot start the network runtime: {e}")))?;
    rt.block_on(run(task, opts, log))
}
