//! The server in process, without a port (tower's `oneshot` on the axum router), on the real
//! SmolLM2 and all-MiniLM-L6-v2: answers checked against independent references (the float64
//! numpy decoder's greedy tokens, sentence-transformers' embeddings), every kind of bad request
//! answered with an OpenAI error object, the queue's 429, a disconnected client's generation
//! stopped, the API key, /health while loading, /metrics.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use smelt_formats::GgmlType;
use smelt_kernels::pool::ThreadPool;
use smelt_models::LoadOptions;
use smelt_serve::engine::{self, EngineConfig};
use smelt_serve::{embeddings, router, AppState, Decoder, Limits};
use tower::ServiceExt;

fn reference(file: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../smelt-models/tests/reference")).join(file)
}

/// A server state with SmolLM2 loaded (weights as `as_type`), `slots` slots and `queue` places.
fn state_with(as_type: Option<GgmlType>, slots: usize, queue: usize, api_key: Option<&str>) -> Arc<AppState> {
    let (_, loaded) = smelt_models::open("smollm2-135m", LoadOptions { weight_type: as_type }, &mut |_| {}).unwrap();
    let state = Arc::new(AppState::new("smollm2-135m".into(), None, api_key.map(String::from), Limits { max_body: 64 << 10, ..Limits::default() }));
    let tok = Arc::new(loaded.tok);
    let cfg = EngineConfig { slots, context: 512, queue };
    let (engine, _) = engine::start(loaded.model, tok.clone(), ThreadPool::new(2), &cfg, state.metrics.clone(), Arc::new(AtomicBool::new(false))).unwrap();
    assert!(state.decoder.set(Decoder { engine, tok, template: loaded.template }).is_none());
    state
}

fn post(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path).header("content-type", "application/json").body(body.into()).unwrap()
}

async fn call(state: &Arc<AppState>, req: Request<Body>) -> (StatusCode, Value, axum::http::HeaderMap) {
    let resp = router(state.clone()).oneshot(req).await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, v, headers)
}

/// An OpenAI error object with this status and (if given) code.
fn assert_error(got: &(StatusCode, Value, axum::http::HeaderMap), status: StatusCode, code: Option<&str>) {
    assert_eq!(got.0, status, "{}", got.1);
    let e = &got.1["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", got.1);
    assert!(e["type"].is_string(), "{}", got.1);
    if let Some(c) = code {
        assert_eq!(e["code"], c, "{}", got.1);
    }
}

/// Three completions at once (so the engine decodes them in one batch, each at its own
/// position) with the numpy reference's prompts as token ids, greedy: each answer is the text
/// of the reference's 64 greedy tokens (F32 weights; the engine's f16 KV cache follows the
/// reference for all 64 tokens, as llama_vs_numpy shows for single sequences).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_greedy_completions_match_the_numpy_reference() {
    let state = state_with(Some(GgmlType::F32), 4, 8, None);
    let r: Value = serde_json::from_str(&std::fs::read_to_string(reference("llama_reference.json")).unwrap()).unwrap();
    let tok = state.decoder.get().unwrap().tok.clone();
    let mut tasks = Vec::new();
    for case in r["cases"].as_array().unwrap().clone() {
        let state = state.clone();
        tasks.push(tokio::spawn(async move {
            let body = json!({"model": "smollm2-135m", "prompt": case["prompt_ids"], "max_tokens": 64, "temperature": 0, "ignore_eos": true});
            (case, call(&state, post("/v1/completions", body.to_string())).await)
        }));
    }
    for t in tasks {
        let (case, (status, v, _)) = t.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{v}");
        let want: Vec<u32> = case["greedy"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        assert_eq!(v["choices"][0]["text"], tok.decode(&want, true), "{v}");
        assert_eq!(v["usage"]["completion_tokens"], 64);
        assert_eq!(v["usage"]["prompt_tokens"], case["prompt_ids"].as_array().unwrap().len());
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["object"], "text_completion");
    }
}

/// Chat, streamed: chunks in OpenAI's order (role first, content pieces, a finish reason, the
/// usage chunk, `[DONE]`), and their text equals the non-streamed greedy answer. Both run from
/// the same cached prompt: a fresh prompt's last token goes through the weights in a batch of
/// rows (f32 activations), a cached one's alone (8-bit activations), which can change even a
/// greedy answer of this small model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_chat_equals_the_whole_answer() {
    let state = state_with(None, 2, 4, None);
    let msgs = json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Name a colour."}]}]);
    let body = json!({"model": "smollm2-135m", "messages": msgs, "max_tokens": 24, "temperature": 0, "unknown_field": [1, 2]}).to_string();
    // The first answer fills the slot's cache; the second and the streamed one both reuse it.
    assert_eq!(call(&state, post("/v1/chat/completions", body.clone())).await.0, StatusCode::OK);
    let whole = call(&state, post("/v1/chat/completions", body)).await;
    assert_eq!(whole.0, StatusCode::OK, "{}", whole.1);
    let text = whole.1["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert_eq!(whole.1["choices"][0]["message"]["role"], "assistant");
    let resp = router(state.clone())
        .oneshot(post("/v1/chat/completions", json!({"model": "smollm2-135m", "messages": msgs, "max_tokens": 24, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}}).to_string()))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let body = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    let data: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(*data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(streamed, text);
    let finish: Vec<&Value> = chunks.iter().map(|c| &c["choices"][0]["finish_reason"]).filter(|f| !f.is_null()).collect();
    assert_eq!(finish.len(), 1);
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(chunks.last().unwrap()["choices"], json!([]));
    assert_eq!(usage["completion_tokens"], whole.1["usage"]["completion_tokens"]);
    assert_eq!(usage["prompt_tokens"], whole.1["usage"]["prompt_tokens"]);
    // The second request's prompt was the first's: the engine reused the slot's cache.
    assert!(usage["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap() > 0, "{usage}");
}

/// Log-probabilities: the chosen token's is the best of the top list under greedy decoding,
/// the top list is sorted, and every probability is a probability.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_are_a_distribution_s_top() {
    let state = state_with(None, 1, 4, None);
    let v = call(&state, post("/v1/chat/completions", json!({"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 5, "temperature": 0, "logprobs": true, "top_logprobs": 3}).to_string())).await;
    assert_eq!(v.0, StatusCode::OK, "{}", v.1);
    let content = v.1["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len() as u64, v.1["usage"]["completion_tokens"].as_u64().unwrap());
    for t in content {
        let top: Vec<f64> = t["top_logprobs"].as_array().unwrap().iter().map(|x| x["logprob"].as_f64().unwrap()).collect();
        assert_eq!(top.len(), 3);
        assert!(top.windows(2).all(|w| w[0] >= w[1]), "{t}");
        assert!(top.iter().all(|&p| p <= 0.0) && top.iter().map(|p| p.exp()).sum::<f64>() <= 1.0 + 1e-6, "{t}");
        assert_eq!(t["logprob"].as_f64().unwrap(), top[0], "greedy picks the most likely token: {t}");
        assert_eq!(t["token"], t["top_logprobs"][0]["token"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_openai_errors_and_the_server_keeps_serving() {
    let state = state_with(None, 1, 4, None);
    let chat = |body: String| post("/v1/chat/completions", body);
    let ok_msgs = json!([{"role": "user", "content": "hi"}]);
    assert_error(&call(&state, chat("{not json".into())).await, StatusCode::BAD_REQUEST, None);
    assert_error(&call(&state, post("/v1/chat/completions", vec![b'{', 0xff, 0xfe, b'}'])).await, StatusCode::BAD_REQUEST, None);
    assert_error(&call(&state, chat(json!({"model": "smollm2-135m", "messages": "hi"}).to_string())).await, StatusCode::BAD_REQUEST, None);
    assert_error(&call(&state, chat(json!({"model": "smollm2-135m", "messages": []}).to_string())).await, StatusCode::BAD_REQUEST, None);
    assert_error(&call(&state, chat(json!({"model": "gpt-4o", "messages": ok_msgs}).to_string())).await, StatusCode::NOT_FOUND, Some("model_not_found"));
    assert_error(&call(&state, chat(json!({"model": "smollm2-135m", "messages": ok_msgs, "max_tokens": 0}).to_string())).await, StatusCode::BAD_REQUEST, None);
    assert_error(&call(&state, chat(json!({"model": "smollm2-135m", "messages": ok_msgs, "max_tokens": 1u64 << 40}).to_string())).await, StatusCode::BAD_REQUEST, None);
    assert_error(&call(&state, chat(json!({"model": "smollm2-135m", "messages": ok_msgs, "temperature": 3}).to_string())).await, StatusCode::BAD_REQUEST, None);
    assert_error(&call(&state, chat(json!({"model": "smollm2-135m", "messages": ok_msgs, "n": 2}).to_string())).await, StatusCode::BAD_REQUEST, None);
    assert_error(&call(&state, chat(json!({"model": "smollm2-135m", "messages": ok_msgs, "stop": ""}).to_string())).await, StatusCode::BAD_REQUEST, None);
    assert_error(&call(&state, chat(json!({"model": "smollm2-135m", "messages": [{"role": "wizard", "content": "x"}]}).to_string())).await, StatusCode::BAD_REQUEST, None);
    let long = "word ".repeat(2000);
    assert_error(&call(&state, chat(json!({"model": "smollm2-135m", "messages": [{"role": "user", "content": long}]}).to_string())).await, StatusCode::BAD_REQUEST, Some("context_length_exceeded"));
    let huge = json!({"model": "smollm2-135m", "messages": [{"role": "user", "content": "x".repeat(100_000)}]}).to_string();
    let refused = call(&state, chat(huge)).await;
    assert_error(&refused, StatusCode::PAYLOAD_TOO_LARGE, None);
    // The rest of the body was not read: the connection cannot take another request.
    assert_eq!(refused.2.get("connection").map(|v| v.to_str().unwrap()), Some("close"));
    assert_error(&call(&state, post("/v1/completions", json!({"model": "smollm2-135m", "prompt": [1, 999_999]}).to_string())).await, StatusCode::BAD_REQUEST, None);
    assert_error(&call(&state, post("/v1/embeddings", json!({"model": "x", "input": "a"}).to_string())).await, StatusCode::NOT_FOUND, Some("model_not_found"));
    assert_error(&call(&state, Request::get("/v2/nothing").body(Body::empty()).unwrap()).await, StatusCode::NOT_FOUND, None);
    // Still serving, with a stop string honoured (the text ends before it).
    let v = call(&state, chat(json!({"model": "smollm2-135m", "messages": ok_msgs, "max_tokens": 40, "temperature": 0, "stop": ["e"]}).to_string())).await;
    assert_eq!(v.0, StatusCode::OK, "{}", v.1);
    let text = v.1["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!text.contains('e'), "{text}");
    assert_eq!(v.1["choices"][0]["finish_reason"], "stop");
    let m = call(&state, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    let m = m.1.as_str().unwrap().to_string();
    assert!(m.contains("smelt_requests_total{route=\"/v1/chat/completions\",status=\"400\"}"), "{m}");
    assert!(m.contains("smelt_requests_total{route=\"/v1/chat/completions\",status=\"200\"} 1"), "{m}");
    assert!(m.contains("smelt_time_to_first_token_seconds_count 1"), "{m}");
}

/// One slot, one place in the queue: a third request gets 429 with Retry-After while the
/// first generates and the second waits; dropping the first's stream stops its generation
/// (the cancelled counter), and the waiting one then completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_and_a_gone_client_frees_its_slot() {
    let state = state_with(None, 1, 1, None);
    let long = json!({"model": "smollm2-135m", "prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": true, "stream": true}).to_string();
    let resp = router(state.clone()).oneshot(post("/v1/completions", long)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    // The role/echo chunk, then the first generated piece: the request holds the slot.
    let mut seen = 0;
    while seen < 3 {
        let f = body.frame().await.unwrap().unwrap();
        if f.data_ref().is_some_and(|d| d.windows(6).any(|w| w == b"data: ")) {
            seen += 1;
        }
    }
    let waiting_state = state.clone();
    let waiting = tokio::spawn(async move { call(&waiting_state, post("/v1/completions", json!({"model": "smollm2-135m", "prompt": "Hello", "max_tokens": 4}).to_string())).await });
    // Wait until the second request is in the queue.
    for _ in 0..3000 {
        if state.metrics.queued.load(std::sync::atomic::Ordering::Relaxed) == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(state.metrics.queued.load(std::sync::atomic::Ordering::Relaxed), 1, "the second request never queued");
    let third = call(&state, post("/v1/completions", json!({"model": "smollm2-135m", "prompt": "Hi", "max_tokens": 4}).to_string())).await;
    assert_error(&third, StatusCode::TOO_MANY_REQUESTS, Some("server_busy"));
    assert_eq!(third.2["retry-after"], "1");
    drop(body);
    let second = tokio::time::timeout(std::time::Duration::from_secs(60), waiting).await.expect("the queued request completes").unwrap();
    assert_eq!(second.0, StatusCode::OK, "{}", second.1);
    assert_eq!(state.metrics.cancelled.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert!(state.metrics.generated_tokens.load(std::sync::atomic::Ordering::Relaxed) < 400, "the dropped stream kept generating");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_and_health_while_loading() {
    let loading = Arc::new(AppState::new("m".into(), None, Some("sekret".into()), Limits::default()));
    let h = call(&loading, Request::get("/health").body(Body::empty()).unwrap()).await;
    assert_eq!(h.0, StatusCode::SERVICE_UNAVAILABLE);
    let no_key = call(&loading, post("/v1/chat/completions", "{}")).await;
    assert_error(&no_key, StatusCode::UNAUTHORIZED, Some("invalid_api_key"));
    let wrong = Request::post("/v1/models").header("authorization", "Bearer sekreT").body(Body::empty()).unwrap();
    assert_eq!(call(&loading, wrong).await.0, StatusCode::UNAUTHORIZED);
    let ok = Request::get("/v1/models").header("authorization", "Bearer sekret").body(Body::empty()).unwrap();
    let models = call(&loading, ok).await;
    assert_eq!(models.0, StatusCode::OK);
    assert_eq!(models.1["data"][0]["id"], "m");
    let req = Request::post("/v1/chat/completions").header("authorization", "Bearer sekret").body(Body::from(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}).to_string())).unwrap();
    assert_error(&call(&loading, req).await, StatusCode::SERVICE_UNAVAILABLE, Some("loading"));
}

/// `/v1/embeddings` on all-MiniLM-L6-v2 against sentence-transformers' vectors of the same
/// texts (tests/reference/encoder_texts.jsonl rows of minilm_l6_st.npy), float and base64.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_match_sentence_transformers() {
    use smelt_formats::npy::read_npy;
    let enc = smelt_models::Encoder::load(&smelt_assets::ensure("all-minilm-l6-v2").unwrap(), None).unwrap();
    let state = Arc::new(AppState::new("lm".into(), Some("all-minilm-l6-v2".into()), None, Limits::default()));
    assert!(state.embedder.set(embeddings::start(enc, ThreadPool::new(2), 4).unwrap()).is_ok());
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(reference("encoder_reference.json")).unwrap()).unwrap();
    let kept = meta["texts"]["sts_kept"].as_u64().unwrap() as usize;
    let texts: Vec<String> = std::fs::read_to_string(reference("encoder_texts.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).filter(|t: &String| !t.is_empty()).take(8).collect();
    let all: Vec<String> = std::fs::read_to_string(reference("encoder_texts.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let refs = read_npy(&std::fs::read(reference("minilm_l6_st.npy")).unwrap()).unwrap();
    let dim = refs.shape[1];
    let refs = refs.data.to_f32();
    let row_of = |t: &str| kept + all.iter().position(|a| a == t).unwrap();
    for format in ["float", "base64"] {
        let v = call(&state, post("/v1/embeddings", json!({"model": "all-minilm-l6-v2", "input": texts, "encoding_format": format}).to_string())).await;
        assert_eq!(v.0, StatusCode::OK, "{}", v.1);
        assert_eq!(v.1["data"].as_array().unwrap().len(), texts.len());
        assert!(v.1["usage"]["prompt_tokens"].as_u64().unwrap() > texts.len() as u64);
        for (i, t) in texts.iter().enumerate() {
            let e = &v.1["data"][i];
            assert_eq!(e["index"], i);
            let got: Vec<f32> = if format == "float" {
                e["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
            } else {
                let b = base64::engine::general_purpose::STANDARD.decode(e["embedding"].as_str().unwrap()).unwrap();
                b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
            };
            let r = row_of(t);
            let want = &refs[r * dim..(r + 1) * dim];
            let cos = smelt_models::stats::cosine(&got, want);
            assert!(cos >= 0.9999, "text {i} ({format}): cosine {cos} to sentence-transformers");
        }
    }
    let one = call(&state, post("/v1/embeddings", json!({"model": "all-minilm-l6-v2", "input": "a single string"}).to_string())).await;
    assert_eq!(one.1["data"].as_array().unwrap().len(), 1);
    assert_error(&call(&state, post("/v1/embeddings", json!({"model": "all-minilm-l6-v2", "input": "x", "dimensions": 128}).to_string())).await, StatusCode::BAD_REQUEST, None);
    assert_error(&call(&state, post("/v1/embeddings", json!({"model": "all-minilm-l6-v2", "input": [[1, 2, 3]]}).to_string())).await, StatusCode::BAD_REQUEST, None);
    assert_error(&call(&state, post("/v1/embeddings", json!({"model": "all-minilm-l6-v2", "input": []}).to_string())).await, StatusCode::BAD_REQUEST, None);
    assert_error(&call(&state, post("/v1/embeddings", json!({"model": "all-minilm-l6-v2", "input": "x", "encoding_format": "int8"}).to_string())).await, StatusCode::BAD_REQUEST, None);
}

/// `POST /admin/reload`: a good file switches new requests to it while a running stream
/// finishes on the old model; a missing file or one that fails the self-check (a NaN planted in
/// a weight's scale) changes nothing, and the server keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_switches_models_and_rolls_back_a_bad_one() {
    use smelt_serve::reload::Spec;
    let path = smelt_assets::ensure("smollm2-135m").unwrap();
    let mut st = AppState::new("smollm2-135m".into(), None, None, Limits::default());
    st.reload = Some(Spec::new(path.display().to_string(), None, Some(256), 2, 4, 2, Arc::new(AtomicBool::new(false))));
    let state = Arc::new(st);
    let s2 = state.clone();
    tokio::task::spawn_blocking(move || smelt_serve::reload::reload(&s2, None)).await.unwrap().unwrap();
    let first = state.decoder.get().unwrap();
    // A long stream on the first model, then a reload while it runs.
    let body = json!({"model": "smollm2-135m", "prompt": "Once upon a time", "max_tokens": 48, "temperature": 0, "ignore_eos": true, "stream": true}).to_string();
    let resp = router(state.clone()).oneshot(post("/v1/completions", body)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let stream = tokio::spawn(async move { String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap() });
    let (status, v, _) = call(&state, post("/admin/reload", "")).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "reloaded");
    let second = state.decoder.get().unwrap();
    assert!(!Arc::ptr_eq(&first, &second), "new requests get the new model");
    drop(first);
    let text = stream.await.unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let chunks = text.matches("\"text\":").count();
    assert!(chunks >= 48, "the stream ran to its end on the old model: {chunks} chunks");
    // A file that does not exist: refused, nothing changes.
    let (status, v, _) = call(&state, post("/admin/reload", json!({"model": "/no/such/model.gguf"}).to_string())).await;
    assert_error(&(status, v, Default::default()), StatusCode::CONFLICT, Some("reload_failed"));
    assert!(Arc::ptr_eq(&second, &state.decoder.get().unwrap()));
    // A file that loads but computes NaN: the self-check refuses it.
    let mut bytes = std::fs::read(&path).unwrap();
    let file = smelt_formats::gguf::GgufFile::open(&path).unwrap();
    let t = file.header.tensor("blk.0.attn_q.weight").unwrap().clone();
    let at = (file.header.data_offset + t.offset) as usize;
    bytes[at..at + 2].copy_from_slice(&0x7e00u16.to_le_bytes()); // the first block's scale: f16 NaN
    let bad = std::env::temp_dir().join(format!("smelt-reload-nan-{}.gguf", std::process::id()));
    std::fs::write(&bad, &bytes).unwrap();
    let (status, v, _) = call(&state, post("/admin/reload", json!({"model": bad.display().to_string()}).to_string())).await;
    let _ = std::fs::remove_file(&bad);
    assert_error(&(status, v.clone(), Default::default()), StatusCode::CONFLICT, Some("reload_failed"));
    assert!(v["error"]["message"].as_str().unwrap().contains("self-check"), "{v}");
    assert!(Arc::ptr_eq(&second, &state.decoder.get().unwrap()));
    let (status, v, _) = call(&state, post("/v1/completions", json!({"model": "smollm2-135m", "prompt": "Hi", "max_tokens": 2}).to_string())).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let m = router(state.clone()).oneshot(Request::get("/metrics").body(Body::empty()).unwrap()).await.unwrap();
    let m = String::from_utf8(m.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(m.contains("smelt_model_reloads_total 2") && m.contains("smelt_model_reload_failures_total 2"), "{m}");
}

/// Monitoring: every local answer's confidence is counted, prompts' embeddings feed the drift
/// gauge (a window of cooking questions, then one of tax questions: the distance rises above a
/// window of the same topic), and each request is logged for `smelt monitor`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_confidence_and_the_request_log() {
    let log = std::env::temp_dir().join(format!("smelt-requests-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let (_, loaded) = smelt_models::open("smollm2-135m", LoadOptions::default(), &mut |_| {}).unwrap();
    let mut st = AppState::new("smollm2-135m".into(), Some("all-minilm-l6-v2".into()), None, Limits::default());
    st.metrics = Arc::new(smelt_serve::Metrics::with_watch(smelt_serve::monitor::Watch::new(-1.8, 2, Some(&log)).unwrap()));
    let state = Arc::new(st);
    let tok = Arc::new(loaded.tok);
    let (engine, _) = engine::start(loaded.model, tok.clone(), ThreadPool::new(2), &EngineConfig { slots: 2, context: 256, queue: 4 }, state.metrics.clone(), Arc::new(AtomicBool::new(false))).unwrap();
    state.decoder.set(Decoder { engine, tok, template: loaded.template });
    let enc = smelt_models::Encoder::load(&smelt_assets::ensure("all-minilm-l6-v2").unwrap(), None).unwrap();
    assert!(state.embedder.set(embeddings::start(enc, ThreadPool::new(1), 4).unwrap()).is_ok());
    let ask = |q: &str| post("/v1/completions", json!({"model": "smollm2-135m", "prompt": q, "max_tokens": 3, "temperature": 0, "ignore_eos": true}).to_string());
    let metric = |m: &str, name: &str| m.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse::<f64>().ok());
    let scrape = |state: Arc<AppState>| async move {
        let r = router(state).oneshot(Request::get("/metrics").body(Body::empty()).unwrap()).await.unwrap();
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    };
    for q in ["How long should I boil an egg?", "What spices go well in a lentil soup?", "How do I keep pasta from sticking?", "Which flour is best for bread?"] {
        assert_eq!(call(&state, ask(q)).await.0, StatusCode::OK);
    }
    let same = metric(&scrape(state.clone()).await, "smelt_drift_embedding_distance").expect("the gauge once both windows are full");
    for q in ["How do I file my income tax return?", "What is the VAT rate on invoices?"] {
        assert_eq!(call(&state, ask(q)).await.0, StatusCode::OK);
    }
    let m = scrape(state.clone()).await;
    let moved = metric(&m, "smelt_drift_embedding_distance").unwrap();
    assert!(moved > same + 0.05, "drift {same} -> {moved}");
    let answers = metric(&m, "smelt_answers_total{confidence=\"low\"}").unwrap() + metric(&m, "smelt_answers_total{confidence=\"ok\"}").unwrap();
    assert_eq!(answers, 6.0, "{m}");
    let lines: Vec<smelt_serve::monitor::LogLine> = std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let _ = std::fs::remove_file(&log);
    assert_eq!(lines.len(), 6);
    assert!(lines.iter().all(|l| l.target == "local" && l.embedding.is_some() && l.mean_logprob.is_some_and(|c| c <= 0.0) && l.completion_tokens > 0));
    let w = smelt_serve::monitor::windows(&lines, 2, -1.8);
    assert_eq!(w.len(), 3);
    assert!(w[2].drift.unwrap() > w[1].drift.unwrap() + 0.05, "{w:?}");
}
