//! `smelt shrink`, `eval` and `compare` run as a user runs them, on the real SmolLM2 and
//! all-MiniLM-L6-v2: one record rendered five ways, and clear refusals of bad input.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;
use smelt_formats::gguf::{GgufArray, GgufValue, GgufWriter, TensorSpec};
use smelt_formats::GgufFile;

fn smelt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_smelt")).args(args).output().expect("run smelt")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("smelt-eval-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// Checks that the tags of an HTML page nest properly (void elements aside) and returns how
/// often each tag opens.
fn check_nesting(html: &str) -> std::collections::HashMap<String, usize> {
    const VOID: [&str; 4] = ["meta", "br", "img", "input"];
    let (mut stack, mut count) = (Vec::<String>::new(), std::collections::HashMap::new());
    let body = html.strip_prefix("<!DOCTYPE html>").expect("doctype first");
    // Skip the embedded JSON: it is data, not markup.
    let (before, after) = body.split_once("<script type=\"application/json\" id=\"smelt-record\">").expect("embedded record");
    let after = after.split_once("</script>").expect("record closed").1;
    let markup = format!("{before}<script></script>{after}");
    let mut rest = markup.as_str();
    while let Some(i) = rest.find('<') {
        let j = rest[i..].find('>').expect("tag closed") + i;
        let tag = &rest[i + 1..j];
        rest = &rest[j + 1..];
        let self_closing = tag.ends_with('/');
        let name: String = tag.trim_start_matches('/').chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
        if tag.starts_with('/') {
            assert_eq!(stack.pop().as_deref(), Some(name.as_str()), "unbalanced </{name}>");
        } else if !self_closing && !VOID.contains(&name.as_str()) {
            stack.push(name.clone());
            *count.entry(name).or_insert(0) += 1;
        } else {
            *count.entry(name).or_insert(0) += 1;
        }
    }
    assert!(stack.is_empty(), "unclosed: {stack:?}");
    count
}

#[test]
fn shrink_makes_measures_and_reports_smollm2_variants() {
    let dir = tmp("shrink");
    let (html, json, csv, md) = (dir.join("r.html"), dir.join("r.json"), dir.join("r.csv"), dir.join("r.md"));
    std::fs::create_dir_all(&dir).unwrap();
    let o = smelt(&[
        "shrink", "--types", "q8_0,q4_0", "--no-fit", "--chunks", "2", "--requests", "1", "--prompt", "32", "--gen", "4", "--out-dir", s(&dir),
        "-o", s(&html), "-o", s(&json), "-o", s(&csv), "-o", s(&md),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("recommendation:") && table.contains("KLD mean"), "{table}");
    // Progress goes to stderr when it is not a terminal, with an ETA.
    assert!(stderr(&o).contains("quantizing to Q8_0") && stderr(&o).contains("timing"), "{}", stderr(&o));

    let rec: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(rec["schema"], "smelt-eval-record");
    let models = rec["models"].as_array().unwrap();
    let names: Vec<&str> = models.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["original (f32)", "Q4_1 (as shipped)", "Q8_0", "Q4_0"]);
    assert_eq!(models[0]["reference"], true);
    let kld = |i: usize| models[i]["lm"]["vs_ref"]["kld_mean"].as_f64().unwrap();
    let top = |i: usize| models[i]["lm"]["vs_ref"]["same_top"].as_f64().unwrap();
    // The shipped Q4_1 file runs the very weights the f32 original holds.
    assert!(kld(1) < 1e-3, "{}", kld(1));
    assert!(kld(2) > 0.0 && kld(2) < kld(3), "Q8_0 {} should be closer than Q4_0 {}", kld(2), kld(3));
    assert!(top(2) > top(3));
    assert_eq!(models[2]["lm"]["tokens_scored"], 2 * 255);
    for m in models {
        let ppl = m["lm"]["ppl"].as_f64().unwrap();
        assert!(ppl > 3.0 && ppl < 200.0, "{ppl}");
        let speed = &m["decoder_speed"];
        assert!(speed["decode_tps"].as_f64().unwrap() > 0.0 && speed["ttft_ms"]["p50"].as_f64().unwrap() > 0.0);
        assert!(speed["energy"]["joules"].as_f64().unwrap() > 0.0);
        assert!(["estimated", "measured (RAPL package)"].contains(&speed["energy"]["method"].as_str().unwrap()));
        assert!(m["peak_rss"].as_u64().unwrap() > 50 << 20);
    }
    // Smaller files: f32 original > Q8_0 > Q4_0.
    let size = |i: usize| models[i]["file_bytes"].as_u64().unwrap_or(models[i]["weight_bytes"].as_u64().unwrap());
    assert!(size(0) > size(2) && size(2) > size(3));
    assert!(rec["recommendation"].as_str().unwrap().contains("smallest model within 5%"));

    // The same record in every format.
    let page = std::fs::read_to_string(&html).unwrap();
    let tags = check_nesting(&page);
    assert!(tags.get("svg").copied().unwrap_or(0) >= 3, "{tags:?}");
    assert!(page.matches("class=\"point\"").count() >= 3 * 2);
    assert!(page.contains("class=\"front\""));
    let embedded = page.split_once("id=\"smelt-record\">").unwrap().1.split_once("</script>").unwrap().0;
    assert_eq!(serde_json::from_str::<Value>(embedded).unwrap(), rec);
    let csv = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(csv.lines().count(), 5);
    assert!(csv.starts_with("model,type,reference,path,size MB"));
    let md = std::fs::read_to_string(&md).unwrap();
    assert_eq!(md.lines().filter(|l| l.starts_with("| ")).count(), 5);
}

#[test]
fn eval_measures_encoder_fidelity_against_the_reference() {
    let json = tmp("enc.json");
    let o = smelt(&["eval", "all-minilm-l6-v2:int8", "--against", "all-minilm-l6-v2", "--no-speed", "-q", "--format", "none", "-o", s(&json)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rec: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let m = &rec["models"][1]["encoder"];
    let cos = &m["cosine"];
    assert!(cos["min"].as_f64().unwrap() > 0.98 && cos["mean"].as_f64().unwrap() > 0.995, "{cos}");
    assert!(cos["n"].as_u64().unwrap() > 500);
    let r = &m["retrieval"];
    assert!(r["overlap"].as_f64().unwrap() > 0.8 && r["k"] == 10, "{r}");
    assert!(rec["models"][0]["encoder"]["cosine"]["min"].as_f64().unwrap() > 0.999_999, "the reference against itself");
}

/// SmolLM2 with one token's text changed: same vocabulary size, different tokenizer.
fn other_vocab() -> PathBuf {
    let src = GgufFile::open(smelt_assets::ensure("smollm2-135m").unwrap()).unwrap();
    let mut meta = src.header.metadata.clone();
    let Some(GgufValue::Array(GgufArray::String(mut toks))) = meta.get("tokenizer.ggml.tokens").cloned() else { panic!("tokens") };
    toks.swap(1000, 1001);
    meta.set("tokenizer.ggml.tokens", GgufValue::Array(GgufArray::String(toks)));
    let specs: Vec<TensorSpec> = src.tensors().iter().map(|t| TensorSpec { name: t.name.clone(), dims: t.dims.clone(), ty: t.ty }).collect();
    let path = tmp("other-vocab.gguf");
    let mut w = GgufWriter::new(std::fs::File::create(&path).unwrap(), 3, &meta, specs).unwrap();
    for t in src.tensors() {
        w.write_tensor(src.tensor_data(t)).unwrap();
    }
    w.finish().unwrap();
    path
}

#[test]
fn eval_refuses_bad_input_clearly() {
    // A text shorter than one chunk.
    let short = tmp("short.txt");
    std::fs::write(&short, "Only a few words here.").unwrap();
    let o = smelt(&["eval", "smollm2-135m", "--text", s(&short), "--no-speed", "-q"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("fewer than one chunk"), "{}", stderr(&o));
    // An empty text.
    std::fs::write(&short, "").unwrap();
    let o = smelt(&["eval", "smollm2-135m", "--text", s(&short), "--no-speed", "-q"]);
    assert!(stderr(&o).contains("fewer than one chunk"), "{}", stderr(&o));
    // Invalid UTF-8.
    std::fs::write(&short, b"abc \xff\xfe def").unwrap();
    let o = smelt(&["eval", "smollm2-135m", "--text", s(&short), "--no-speed", "-q"]);
    assert!(stderr(&o).contains("not valid UTF-8"), "{}", stderr(&o));
    // A reference with another vocabulary.
    let other = other_vocab();
    let o = smelt(&["eval", "smollm2-135m", "--against", s(&other), "--chunks", "1", "--no-speed", "-q"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("different vocabularies"), "{}", stderr(&o));
    // A decoder against an encoder.
    let o = smelt(&["eval", "smollm2-135m", "--against", "all-minilm-l6-v2", "--no-speed", "-q"]);
    assert!(stderr(&o).contains("cannot be compared"), "{}", stderr(&o));
    // An output that cannot be written is refused before any work, and nothing is lost.
    let o = smelt(&["eval", "smollm2-135m", "--no-speed", "-q", "-o", "/nonexistent-dir/report.html"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("cannot write /nonexistent-dir/report.html"), "{}", stderr(&o));
    let o = smelt(&["eval", "smollm2-135m", "--no-speed", "-q", "-o", s(&tmp("report.pdf"))]);
    assert!(stderr(&o).contains(".json, .csv, .md, .html"), "{}", stderr(&o));
    // An unknown variant.
    let o = smelt(&["eval", "smollm2-135m:q9_9", "-q"]);
    assert!(stderr(&o).contains("unknown variant"), "{}", stderr(&o));
}
