//! Answering a generation request through the [`crate::router`]: the decision, the remote
//! exchange (whole or streamed through), the local answer when the remote fails, and the
//! headers that explain what happened.

use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http_body_util::BodyExt;
use serde_json::Value;

use crate::api::ApiError;
use crate::engine::Note;
use crate::generate::{Local, Outcome};
use crate::monitor::LogLine;
use crate::privacy::Detector;
use crate::remote::RemoteError;
use crate::router::{Decision, Override, Router, Target};
use crate::AppState;

/// Answers a request: `raw` is its JSON (forwarded to the remote as is, but for the model name
/// and any redaction), `texts` its message or prompt texts, `local` the local answer (run only
/// if needed).
pub async fn answer(state: &AppState, headers: &HeaderMap, raw: Value, path: &'static str, texts: &[String], local: &Local) -> Result<Response, ApiError> {
    // The prompt's embedding: at once when drift is tracked, else only if the complexity signal
    // comes to need it (a failed embedding, e.g. the worker busy, leaves both without it).
    let embed = || crate::embeddings::embed_one(state, texts.join("\n"));
    let mut embedding = if state.metrics.watch.drift.is_some() { embed().await.ok() } else { None };
    if let (Some(d), Some(x)) = (&state.metrics.watch.drift, &embedding) {
        d.lock().unwrap_or_else(|p| p.into_inner()).add(x);
    }
    let note = |reason: &'static str, embedding: &Option<Vec<f32>>| Note { reason, embedding: embedding.clone() };
    let Some(router) = &state.router else {
        return local.answer(state, note("default", &embedding)).await;
    };
    let over = Override::parse(headers.get("x-smelt-route").and_then(|v| v.to_str().ok())).map_err(|e| ApiError::invalid(e, None))?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let private = !router.findings(&refs).is_empty();
    let context = state.decoder.get().map_or(usize::MAX, |d| d.engine.context);
    let mut d = router.decide(private, over, local.prompt.len(), context);
    if d.target == Target::Local && d.reason == "default" && router.could_escalate() {
        // The content signals: the classifier first (cheap), then the draft.
        if let Some(cx) = &router.complexity {
            if embedding.is_none() {
                embedding = embed().await.ok();
            }
            if embedding.as_ref().is_some_and(|x| cx.p_remote(x) >= cx.threshold) {
                d = router.escalate("complexity", private);
            }
        }
        if d.target == Target::Local && d.reason == "default" {
            if let Some(gate) = router.confidence {
                match local.run(state, Some(gate), note("default", &embedding)).await? {
                    Outcome::Answer(r) => {
                        state.metrics.count_route("local", "default");
                        return Ok(tag(r, &d, None));
                    }
                    Outcome::Unsure(_) => d = router.escalate("confidence", private),
                }
            }
        }
    }
    state.metrics.count_route(d.target.label(), d.reason);
    if d.target == Target::Local {
        return Ok(tag(local.answer(state, note(d.reason, &embedding)).await.unwrap_or_else(IntoResponse::into_response), &d, None));
    }
    let mut body = raw;
    if d.redact {
        redact(&mut body, &router.detector);
    }
    let started = Instant::now();
    let result = if body["stream"].as_bool() == Some(true) {
        stream_through(router, path, body, started).await
    } else {
        router.remote.whole(path, body, started).await.map(|v| Json(v).into_response())
    };
    match result {
        Ok(r) => {
            if state.metrics.watch.logging() {
                let embedding = embedding.as_deref().map(crate::embeddings::encode_base64);
                state.metrics.watch.write(&LogLine { time: crate::monitor::now(), target: "remote".into(), reason: d.reason.into(), prompt_tokens: local.prompt.len(), seconds: started.elapsed().as_secs_f64(), embedding, ..Default::default() });
            }
            Ok(tag(r, &d, None))
        }
        Err(e) => {
            // Graceful degradation: the local model answers, and says why.
            state.metrics.count_route("local", "fallback");
            let d = Decision { target: Target::Local, ..d };
            Ok(tag(local.answer(state, note("fallback", &embedding)).await.unwrap_or_else(IntoResponse::into_response), &d, Some(e.label())))
        }
    }
}

/// `x-smelt-route: TARGET; reason=REASON[; redacted]` and `x-smelt-fallback: FAILURE`.
fn tag(mut r: Response, d: &Decision, fallback: Option<&'static str>) -> Response {
    let redacted = if d.redact && d.target == Target::Remote { "; redacted" } else { "" };
    if let Ok(v) = HeaderValue::from_str(&format!("{}; reason={}{redacted}", d.target.label(), d.reason)) {
        r.headers_mut().insert("x-smelt-route", v);
    }
    if let Some(f) = fallback {
        r.headers_mut().insert("x-smelt-fallback", HeaderValue::from_static(f));
    }
    r
}

/// Replaces private data in every message text and prompt string of `body` by placeholders.
pub fn redact(body: &mut Value, det: &Detector) {
    fn walk(v: &mut Value, det: &Detector) {
        match v {
            Value::String(s) => *s = det.redact(s).0,
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, det)),
            Value::Object(o) => {
                for (k, x) in o.iter_mut() {
                    if k != "role" && k != "type" {
                        walk(x, det);
                    }
                }
            }
            _ => {}
        }
    }
    for key in ["messages", "prompt"] {
        if let Some(v) = body.get_mut(key) {
            walk(v, det);
        }
    }
}

/// An SSE error event and the end of the stream, for a remote that fails after the first byte
/// reached the client (too late to answer locally instead).
fn error_event(message: &str) -> Bytes {
    let e = serde_json::json!({"error": {"message": message, "type": "server_error", "param": null, "code": "remote_failed"}});
    Bytes::from(format!("data: {e}\n\ndata: [DONE]\n\n"))
}

/// Streams the remote's answer through. Nothing reaches the client until the remote's first
/// event arrived (within the first-byte time), so any failure up to then can still fall back
/// to the local model; after it, a failure (a stall past the total time, a stream past the
/// size limit, a broken connection) ends the stream with an error event.
async fn stream_through(router: &Router, path: &str, body: Value, started: Instant) -> Result<Response, RemoteError> {
    let cfg = &router.remote.cfg;
    let resp = router.remote.post(path, body).await?;
    let mut inc = resp.into_body();
    let first = loop {
        match tokio::time::timeout(cfg.first_byte_timeout, inc.frame()).await {
            Err(_) => return Err(RemoteError::Timeout("first event")),
            Ok(None) => return Err(RemoteError::BadBody("the stream ended before any event".into())),
            Ok(Some(Err(e))) => return Err(RemoteError::BadBody(e.to_string())),
            Ok(Some(Ok(f))) => {
                if let Ok(d) = f.into_data() {
                    if !d.is_empty() {
                        break d;
                    }
                }
            }
        }
    };
    if !(first.starts_with(b"data:") || first.starts_with(b":") || first.starts_with(b"event:")) {
        return Err(RemoteError::BadBody("the answer is not server-sent events".into()));
    }
    let deadline = started + cfg.total_timeout;
    let max = cfg.max_body;
    let s = futures_util::stream::unfold((Some(first), inc, 0usize, false), move |(first, mut inc, seen, done)| async move {
        if done {
            return None;
        }
        if let Some(f) = first {
            let n = f.len();
            return Some((Ok::<Bytes, std::io::Error>(f), (None, inc, seen + n, false)));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, inc.frame()).await {
            Ok(None) => None,
            Ok(Some(Ok(frame))) => match frame.into_data() {
                Ok(d) if seen + d.len() <= max => {
                    let n = d.len();
                    Some((Ok(d), (None, inc, seen + n, false)))
                }
                Ok(_) => Some((Ok(error_event("the remote's answer passed the size limit")), (None, inc, seen, true))),
                Err(_) => Some((Ok(Bytes::new()), (None, inc, seen, false))),
            },
            Ok(Some(Err(e))) => Some((Ok(error_event(&format!("the remote's stream broke: {e}"))), (None, inc, seen, true))),
            Err(_) => Some((Ok(error_event("the remote's answer ran past the time limit")), (None, inc, seen, true))),
        }
    });
    let mut r = Response::new(Body::from_stream(s));
    r.headers_mut().insert("content-type", HeaderValue::from_static("text/event-stream"));
    r.headers_mut().insert("cache-control", HeaderValue::from_static("no-cache"));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_reaches_every_text_but_roles() {
        let mut v = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "mail me at a@b.com"}, {"role": "user", "content": [{"type": "text", "text": "card 4111111111111111"}]}], "stream": true});
        redact(&mut v, &Detector::default());
        assert_eq!(v["messages"][0]["content"], "mail me at [EMAIL]");
        assert_eq!(v["messages"][1]["content"][0]["text"], "card [CARD_NUMBER]");
        assert_eq!(v["messages"][0]["role"], "user");
        let mut p = serde_json::json!({"prompt": ["call +44 20 7946 0958"]});
        redact(&mut p, &Detector::default());
        assert_eq!(p["prompt"][0], "call [PHONE]");
    }
}
