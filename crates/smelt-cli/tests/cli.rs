//! The `smelt` binary run as a user runs it: real model, real files, exit codes, messages.

use std::path::PathBuf;
use std::process::{Command, Output};

use smelt_formats::{GgmlType, GgufFile};

fn smelt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_smelt")).args(args).output().expect("run smelt")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("smelt-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn inspect_json_describes_smollm2() {
    let o = smelt(&["inspect", "smollm2-135m", "--json", "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["architecture"], "llama");
    assert_eq!(v["summary"]["parameters"], 134_515_008u64);
    assert_eq!(v["summary"]["tensors"], 272);
    assert_eq!(v["tensors"].as_array().unwrap().len(), 272);
    assert_eq!(v["metadata"]["llama.block_count"]["value"], 30);
    assert_eq!(v["metadata"]["tokenizer.ggml.tokens"]["value"]["len"], 49152);
    let types: Vec<&str> = v["types"].as_array().unwrap().iter().map(|t| t["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["Q4_1", "Q8_0", "F32"]);
}

#[test]
fn inspect_reads_a_safetensors_model_directory() {
    let o = smelt(&["inspect", "all-minilm-l6-v2", "--summary", "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    assert!(s.contains("architecture  bert") && s.contains("22.7 M") && s.contains("F32"), "{s}");
}

#[test]
fn quantize_writes_a_valid_smaller_file() {
    let out = tmp("q8.gguf");
    let o = smelt(&["quantize", "smollm2-135m", out.to_str().unwrap(), "--to", "q8_0", "--keep", "blk.0.*", "--json", "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let err = summary["weight_relative_rms_error"].as_f64().unwrap();
    assert!(err > 0.0 && err < 0.01, "Q8_0 re-quantization of Q4_1 weights should be close: {err}");
    let f = GgufFile::open(&out).unwrap();
    assert_eq!(f.tensors().len(), 272);
    assert_eq!(f.tensor("blk.0.ffn_up.weight").unwrap().ty, GgmlType::Q4_1, "--keep");
    assert_eq!(f.tensor("blk.1.ffn_up.weight").unwrap().ty, GgmlType::Q8_0);
    assert_eq!(f.tensor("blk.1.attn_norm.weight").unwrap().ty, GgmlType::F32, "1-D tensors stay");
    assert_eq!(f.header.get_u64("general.file_type").unwrap(), 7);
    // The original metadata is carried over.
    assert_eq!(f.header.get("tokenizer.ggml.merges").unwrap().as_array().unwrap().len(), 48900);
    // No temporary file is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(out.parent().unwrap()).unwrap().filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().contains(".tmp-")).collect();
    assert!(leftovers.is_empty());
    // Refuses to write over its input.
    let o = smelt(&["quantize", out.to_str().unwrap(), out.to_str().unwrap(), "--to", "q4_0", "-q"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("is the input file"), "{}", stderr(&o));
    assert_eq!(GgufFile::open(&out).unwrap().tensor("blk.1.ffn_up.weight").unwrap().ty, GgmlType::Q8_0, "input untouched");
}

/// The lattice types smelt writes (ggml's IQ2/IQ3/IQ4_XS) on the real model: the 1536-wide
/// `ffn_down` takes them, the 576-wide matrices fall back to IQ4_NL as llama.cpp's rule says, the
/// error falls with the bits, and the file runs (Q8_K activations, lattice kernels) as its exact
/// F32 expansion does. (Reading the types is checked against the `gguf` package elsewhere.)
#[test]
fn lattice_types_are_written_and_run_as_their_f32_expansion() {
    // A directory of its own: another test checks that no temporary file is left in `tmp()`'s.
    let dir = std::env::temp_dir().join(format!("smelt-cli-lattice-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tmp = |name: &str| dir.join(name);
    let text = tmp("lattice-text.txt");
    std::fs::write(&text, std::fs::read_to_string("../../../shared/data/austen/persuasion.txt").unwrap_or_else(|_| "It was a fine day in Bath. ".repeat(200)).chars().take(6000).collect::<String>()).unwrap();
    let mut last_err = f64::INFINITY;
    for (ty, name) in [(GgmlType::IQ2_XS, "iq2_xs"), (GgmlType::IQ3_S, "iq3_s"), (GgmlType::IQ4_XS, "iq4_xs")] {
        let (q, f) = (tmp(&format!("{name}.gguf")), tmp(&format!("{name}-f32.gguf")));
        let o = smelt(&["quantize", "smollm2-135m", q.to_str().unwrap(), "--to", name, "--embed-type", "q8_0", "--json", "-q"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let err = serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["weight_relative_rms_error"].as_f64().unwrap();
        assert!(err < last_err, "{ty}: error {err} not below the smaller type's {last_err}");
        last_err = err;
        let file = GgufFile::open(&q).unwrap();
        assert_eq!(file.tensor("blk.3.ffn_down.weight").unwrap().ty, ty);
        assert_eq!(file.tensor("blk.3.ffn_up.weight").unwrap().ty, GgmlType::IQ4_NL, "576-wide rows fall back");
        let o = smelt(&["quantize", q.to_str().unwrap(), f.to_str().unwrap(), "--to", "f32", "-q"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let o = smelt(&["eval", q.to_str().unwrap(), "--against", f.to_str().unwrap(), "--text", text.to_str().unwrap(), "--ctx", "128", "--chunks", "2", "--no-speed", "--format", "json", "-q"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let m = v["models"].as_array().unwrap().iter().find(|m| m["reference"] != true).unwrap().clone();
        let (kld, top) = (m["lm"]["vs_ref"]["kld_mean"].as_f64().unwrap(), m["lm"]["vs_ref"]["same_top"].as_f64().unwrap());
        assert!(kld < 3e-3 && top > 0.94, "{ty} kernels vs the F32 expansion: KLD {kld}, same top {top}");
        std::fs::remove_file(&q).ok();
        std::fs::remove_file(&f).ok();
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn quantize_dry_run_shows_fallbacks() {
    let o = smelt(&["quantize", "smollm2-135m", "/nonexistent/x.gguf", "--to", "q4_k", "--dry-run", "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    assert!(s.contains("blk.0.ffn_down.weight") && s.contains("-> Q4_K"), "{s}");
    assert!(s.contains("-> Q5_0") && s.contains("not a multiple of Q4_K's 256"), "{s}");
}

#[test]
fn help_lists_every_type_with_bits_per_weight() {
    let o = smelt(&["quantize", "--help"]);
    assert!(o.status.success());
    let s = stdout(&o);
    for ty in GgmlType::weight_targets() {
        let line = s.lines().find(|l| l.split_whitespace().next() == Some(ty.name())).unwrap_or_else(|| panic!("{ty} missing from help:\n{s}"));
        assert!(line.contains(&format!("{:.3}", ty.bits_per_weight())), "{line}");
    }
}

#[test]
fn bad_input_gets_clear_errors_and_exit_codes() {
    let o = smelt(&["inspect", "no-such-model"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("known models") && stderr(&o).contains("smollm2-135m"), "{}", stderr(&o));

    let o = smelt(&["quantize", "smollm2-135m", "x.gguf", "--to", "q9_9"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("unknown type") && stderr(&o).contains("Q4_K"), "{}", stderr(&o));

    let o = smelt(&["quantize", "smollm2-135m", "x.gguf", "--to", "q8_k"]);
    assert_eq!(o.status.code(), Some(2), "activation-only types are refused");

    let junk = tmp("junk.gguf");
    // Version 3, 2^64-1 tensors, no metadata.
    std::fs::write(&junk, b"GGUF\x03\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff\x00\x00\x00\x00\x00\x00\x00\x00").unwrap();
    let o = smelt(&["inspect", junk.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("tensor count") && stderr(&o).contains("impossible"), "{}", stderr(&o));

    let o = smelt(&["quantize", "smollm2-135m", "/nonexistent-dir/out.gguf", "--to", "q8_0", "-q"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("/nonexistent-dir/out.gguf"), "{}", stderr(&o));
}

#[test]
fn models_lists_the_catalog() {
    let o = smelt(&["models", "--json"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = v.as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"smollm2-135m") && names.contains(&"all-minilm-l6-v2") && names.contains(&"gemma3-270m"));
}

/// A GGUF with the given metadata and no tensors.
fn tiny_gguf(name: &str, kv: &[(&str, smelt_formats::gguf::GgufValue)]) -> PathBuf {
    let mut m = smelt_formats::Metadata::new();
    for (k, v) in kv {
        m.set(*k, v.clone());
    }
    let path = tmp(name);
    let f = std::fs::File::create(&path).unwrap();
    smelt_formats::gguf::GgufWriter::new(f, 3, &m, vec![]).unwrap().finish().unwrap();
    path
}

#[test]
fn run_refuses_unsupported_models_clearly() {
    use smelt_formats::gguf::GgufValue as V;
    let neox = tiny_gguf("neox.gguf", &[("general.architecture", V::String("gptneox".into()))]);
    let o = smelt(&["run", "-m", neox.to_str().unwrap(), "-p", "hi", "-q"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("\"gptneox\" is not supported") && stderr(&o).contains("llama"), "{}", stderr(&o));
    let no_tok = tiny_gguf(
        "notok.gguf",
        &[
            ("general.architecture", V::String("llama".into())),
            ("llama.embedding_length", V::U32(64)),
            ("llama.block_count", V::U32(1)),
            ("llama.feed_forward_length", V::U32(128)),
            ("llama.attention.head_count", V::U32(4)),
        ],
    );
    let o = smelt(&["run", "-m", no_tok.to_str().unwrap(), "-p", "hi", "-q"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("tokenizer"), "{}", stderr(&o));
}

#[test]
fn run_is_deterministic_and_reports_in_json() {
    let args = ["run", "--raw", "-p", "The capital of France is", "-n", "12", "--json", "-q"];
    let greedy: Vec<serde_json::Value> = (0..2)
        .map(|_| {
            let o = smelt(&[&args[..], &["--temp", "0"]].concat());
            assert!(o.status.success(), "{}", stderr(&o));
            serde_json::from_slice(&o.stdout).unwrap()
        })
        .collect();
    assert_eq!(greedy[0]["text"], greedy[1]["text"]);
    assert!(greedy[0]["text"].as_str().unwrap().starts_with(" Paris"), "{}", greedy[0]["text"]);
    assert_eq!(greedy[0]["completion_tokens"], 12);
    assert_eq!(greedy[0]["stop_reason"], "length");
    assert!(greedy[0]["timings"]["generation_tokens_per_second"].as_f64().unwrap() > 0.0);
    let seeded = |seed: &str| {
        let o = smelt(&[&args[..], &["--temp", "1.0", "--seed", seed]].concat());
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["text"].clone()
    };
    assert_eq!(seeded("42"), seeded("42"));
    // Stop strings end the text before them.
    let o = smelt(&["run", "--raw", "-p", "The capital of France is", "-n", "30", "--temp", "0", "--stop", ".", "--json", "-q"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v["text"].as_str().unwrap(), v["stop_reason"].as_str().unwrap()), (" Paris", "stop"));
}

#[test]
fn run_reports_bad_prompts_and_long_prompts() {
    let o = smelt(&["run", "-p", &"word ".repeat(300), "-c", "64", "-q"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("context holds 64"), "{}", stderr(&o));
    let mut child = Command::new(env!("CARGO_BIN_EXE_smelt"))
        .args(["run", "-f", "-", "-q"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"bad \xff\xfe bytes").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not valid UTF-8"), "{}", stderr(&o));
}

#[test]
fn chat_works_from_a_pipe_and_skips_invalid_lines() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_smelt"))
        .args(["chat", "--temp", "0", "-n", "16", "-q"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"What is 2+2?\n\xff oops\n/reset\nSay hello.\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let answers: Vec<&str> = std::str::from_utf8(&o.stdout).unwrap().lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(answers.len() >= 2, "{answers:?}");
    assert!(stderr(&o).contains("not valid UTF-8"), "{}", stderr(&o));
}

#[test]
fn ctrl_c_stops_generation_cleanly() {
    use std::io::Read;
    let mut child = Command::new(env!("CARGO_BIN_EXE_smelt"))
        .args(["run", "--raw", "-p", "Once upon a time", "-n", "100000", "-c", "4096", "-q"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    // Interrupt only once text is flowing (a debug build on a loaded machine may take far
    // longer than usual to load the model; a signal before that is not the case under test).
    let mut out = child.stdout.take().unwrap();
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 256];
        let mut told = false;
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            if !told {
                let _ = first_tx.send(());
                told = true;
            }
        }
        all
    });
    first_rx.recv_timeout(std::time::Duration::from_secs(300)).expect("no text within 300 s");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let status = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(status.success());
    let o = child.wait_with_output().unwrap();
    let stdout = reader.join().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert!(!stdout.is_empty());
}
