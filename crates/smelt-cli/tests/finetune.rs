//! `smelt finetune`, `run --lora`, `eval --lora` and `merge` as a user runs them, on the tiny
//! decoder of `tiny/` (text and chat data), and the bad inputs of the fine-tuning issue: rank 0 or
//! larger than a matrix, unknown targets, chat data without assistant turns, broken JSON lines,
//! an adapter for another base. Nothing is written when a command fails.

use std::path::Path;
use std::process::{Command, Output};

mod tiny;

fn smelt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_smelt")).args(args).output().expect("run smelt")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn greedy(model: &str, extra: &[&str]) -> String {
    let mut args = vec!["run", "-m", model, "--raw", "-p", "hello the man", "-n", "12", "--temp", "0", "-q"];
    args.extend_from_slice(extra);
    let o = smelt(&args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn finetune_text_then_run_eval_and_merge_the_adapter() {
    let d = std::env::temp_dir().join(format!("smelt-finetune-test-{}-text", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    let files = tiny::files(&d, 7);
    let text = d.join("text.txt");
    std::fs::write(&text, "hello world, the man is playing the guitar. ".repeat(80)).unwrap();
    let adapter = d.join("a.lora.gguf");
    let (m, x, a) = (s(&files.gguf), s(&text), s(&adapter));
    let o = smelt(&["finetune", m, "--data", x, "-o", a, "--lora-rank", "4", "--ctx", "32", "--batch", "2", "--steps", "6", "--lr", "3e-2", "--eval-every", "3", "--json", "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["steps"].as_u64(), Some(6));
    assert_eq!(v["lora"]["params"].as_u64(), Some(2 * 4 * (2 * (32 + 32) + 2 * (32 + 16) + 3 * (32 + 64))));
    let (before, after) = (v["val_loss_before"].as_f64().unwrap(), v["val_loss_after"].as_f64().unwrap());
    assert!(after < before, "a repetitive text must get easier: validation loss {before} -> {after}");
    assert!(d.join("a.lora.gguf.training.html").exists() && d.join("a.lora.gguf.finetune.json").exists());
    assert!(!d.join("a.lora.gguf.ckpt").exists(), "the checkpoint of a finished run is removed");

    // The adapter changes what the model says; merged into F32 weights it says the same.
    let plain = greedy(m, &[]);
    let adapted = greedy(m, &["--lora", a]);
    assert_ne!(plain, adapted, "the adapter changed nothing");
    assert_eq!(greedy(m, &["--lora", a, "--lora-scale", "0"]), plain, "--lora-scale 0 turns it off");
    let merged = d.join("merged.gguf");
    let o = smelt(&["merge", m, a, "-o", s(&merged), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mv: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(mv["merged_matrices"].as_u64(), Some(14));
    assert_eq!(greedy(s(&merged), &[]), adapted, "merged weights and the run-time adapter disagree");

    // Training continues from an adapter of the same rank; another rank is refused.
    let (a2, a3) = (d.join("a2.gguf"), d.join("a3.gguf"));
    let o = smelt(&["finetune", m, "--data", x, "-o", s(&a2), "--lora-rank", "4", "--ctx", "32", "--batch", "2", "--steps", "1", "--init-adapter", a, "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = smelt(&["finetune", m, "--data", x, "-o", s(&a3), "--lora-rank", "2", "--ctx", "32", "--batch", "2", "--steps", "1", "--init-adapter", a, "-q"]);
    assert!(!o.status.success() && stderr(&o).contains("LoRA") && !a3.exists(), "{}", stderr(&o));

    // eval --lora measures the adapted model: lower perplexity on the training text.
    let ppl = |extra: &[&str]| -> f64 {
        let mut args = vec!["eval", m, "--text", x, "--ctx", "32", "--no-speed", "--format", "json", "-q"];
        args.extend_from_slice(extra);
        let o = smelt(&args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        r["models"][0]["lm"]["ppl"].as_f64().unwrap_or_else(|| panic!("no perplexity in {r}"))
    };
    let (p0, p1) = (ppl(&[]), ppl(&["--lora", a]));
    assert!(p1 < p0, "eval --lora: perplexity {p0} -> {p1}");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn finetune_chat_and_refuse_bad_inputs() {
    let d = std::env::temp_dir().join(format!("smelt-finetune-test-{}-chat", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    let files = tiny::files(&d, 8);
    let chat = d.join("chat.jsonl");
    let line = r#"{"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "the man plays the guitar"}]}"#;
    std::fs::write(&chat, format!("{line}\n").repeat(12)).unwrap();
    let out = d.join("c.lora.gguf");
    let (m, c, o_) = (s(&files.gguf), s(&chat), s(&out));
    let o = smelt(&["finetune", m, "--data", c, "-o", o_, "--lora-rank", "2", "--lora-targets", "attn_q,attn_v", "--batch", "2", "--steps", "2", "--json", "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // Only the answer is trained: "the man plays the guitar" and <|im_end|>, not the prompt.
    let answer_tokens = v["trained_tokens"].as_u64().unwrap() / v["train_examples"].as_u64().unwrap();
    assert!((5..=26).contains(&answer_tokens), "{answer_tokens} trained tokens per conversation");
    assert_eq!(v["lora"]["params"].as_u64(), Some(2 * 2 * (32 + 32 + 32 + 16)));
    std::fs::remove_file(&out).unwrap();

    let no_answer = d.join("q.jsonl");
    std::fs::write(&no_answer, r#"{"messages": [{"role": "user", "content": "hello"}]}"#).unwrap();
    let broken = d.join("b.jsonl");
    std::fs::write(&broken, format!("{line}\n{{\"messages\": [\n")).unwrap();
    let text = d.join("t.txt");
    std::fs::write(&text, "the man plays the guitar. ".repeat(40)).unwrap();
    let short = d.join("s.txt");
    std::fs::write(&short, "too short").unwrap();
    let base = |data: &Path, extra: &[&str]| -> Vec<String> {
        let ctx: &[&str] = if extra.contains(&"--ctx") { &[] } else { &["--ctx", "16"] };
        ["finetune", m, "--data", s(data), "-o", o_, "--steps", "1", "-q"].iter().chain(ctx).chain(extra).map(|a| a.to_string()).collect()
    };
    for (args, says) in [
        (base(&text, &["--lora-rank", "0"]), "from 1"),
        (base(&text, &["--lora-rank", "17"]), "larger than"),
        (base(&text, &["--lora-targets", "attn_x"]), "choose from"),
        (base(&text, &["--lora-alpha", "-1"]), "alpha"),
        (base(&no_answer, &[]), "no assistant message"),
        (base(&broken, &[]), "line 2"),
        (base(&text, &["--ctx", "4000"]), "trained context"),
        (base(&short, &[]), "no training examples"),
    ] {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = smelt(&refs);
        let e = stderr(&o);
        assert!(!o.status.success() && e.contains(says), "{args:?}: expected {says:?} in:\n{e}");
        assert!(!out.exists(), "{args:?} left {}", out.display());
    }

    // An adapter for another base model, or a file that is no adapter, is refused everywhere.
    let adapter = d.join("a.gguf");
    let o = smelt(&["finetune", m, "--data", s(&text), "-o", s(&adapter), "--ctx", "16", "--steps", "1", "--lora-rank", "2", "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let other_path = d.join("other.gguf");
    let mut g = tiny::llama(3);
    for t in g.tensors.iter_mut().filter(|t| t.name.contains("ffn_") && t.dims.len() == 2) {
        // FFN 64 -> 32: the adapter's ffn pairs no longer fit.
        let (cols, rows) = (t.dims[0], t.dims[1]);
        let (cols, rows) = if t.name.contains("down") { (cols / 2, rows) } else { (cols, rows / 2) };
        t.dims = vec![cols, rows];
        t.data.truncate((cols * rows * 4) as usize);
    }
    g.set("llama.feed_forward_length", tiny::Kv::U32(32));
    std::fs::write(&other_path, g.to_bytes()).unwrap();
    let merged = d.join("m.gguf");
    for args in [
        vec!["run", "-m", s(&other_path), "--lora", s(&adapter), "-p", "hi", "-n", "2", "-q"],
        vec!["merge", s(&other_path), s(&adapter), "-o", s(&merged)],
        vec!["run", "-m", m, "--lora", m, "-p", "hi", "-n", "2", "-q"],
        vec!["merge", m, m, "-o", s(&merged)],
    ] {
        let o = smelt(&args);
        let e = stderr(&o);
        assert!(!o.status.success() && (e.contains("another base") || e.contains("not a LoRA adapter")), "{args:?}:\n{e}");
        assert!(!merged.exists());
    }
    std::fs::remove_dir_all(&d).ok();
}

/// `classify train --finetune` on the tiny BERT: the head and the fine-tuned encoder directory
/// are written, predict and eval use them; impossible settings are refused with nothing written.
#[test]
fn classify_train_finetune_writes_encoder_and_head() {
    let d = std::env::temp_dir().join(format!("smelt-finetune-test-{}-classify", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    let files = tiny::files(&d, 9);
    let data = d.join("labelled.jsonl");
    let rows: String = (0..40).map(|i| format!("{{\"text\": \"{}\", \"label\": \"{}\"}}\n", if i % 2 == 0 { "the man plays a guitar" } else { "a guitar is" }, if i % 2 == 0 { "a" } else { "b" })).collect();
    std::fs::write(&data, rows).unwrap();
    let head = d.join("h.json");
    let (m, x, h) = (s(&files.bert), s(&data), s(&head));
    for (extra, says) in [(vec!["--train-layers", "9"], "layers"), (vec!["--int8"], "cannot be used")] {
        let mut args = vec!["classify", "train", x, "-o", h, "-m", m, "--finetune", "-q"];
        args.extend(extra);
        let o = smelt(&args);
        assert!(!o.status.success() && stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
        assert!(!head.exists() && !d.join("h.json.encoder").exists());
    }
    let o = smelt(&["classify", "train", x, "-o", h, "-m", m, "--finetune", "--train-layers", "1", "--epochs", "2", "--batch", "8", "--lr", "1e-3", "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let enc = d.join("h.json.encoder");
    assert!(enc.join("model.safetensors").exists() && enc.join("config.json").exists());
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&head).unwrap()).unwrap();
    assert_eq!(v["encoder"].as_str(), Some(s(&enc)));
    let o = smelt(&["classify", "eval", "--head", h, x, "--json", "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(r["accuracy"].as_f64().unwrap() > 0.9, "two texts repeated: {r}");
    // Training again to the same head would overwrite the encoder directory: refused.
    let o = smelt(&["classify", "train", x, "-o", h, "-m", m, "--finetune", "-q"]);
    assert!(!o.status.success() && stderr(&o).contains("exists"), "{}", stderr(&o));
    std::fs::remove_dir_all(&d).ok();
}

/// `smelt qat ENCODER --to int8` on the tiny BERT: the int8 model's validation gap falls, the
/// directory is written with its summary and runs under `smelt embed --int8`; the wrong target
/// for the kind of model, decoder-only options, a selection of no matrix and an existing output
/// are refused.
#[test]
fn qat_for_the_int8_path_of_an_encoder() {
    let d = std::env::temp_dir().join(format!("smelt-finetune-test-{}-qat-int8", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    let files = tiny::files(&d, 12);
    let words = ["hello", "world", "the", "man", "is", "playing", "guitar", "a", "plays"];
    let mut rng = tiny::Rng(9);
    let prose: Vec<String> = (0..300).map(|_| format!("{}.", (0..6).map(|_| words[rng.below(words.len())]).collect::<Vec<_>>().join(" "))).collect();
    let text = d.join("sentences.txt");
    std::fs::write(&text, prose.join(" ")).unwrap();
    let (m, x) = (s(&files.bert), s(&text));
    let out = d.join("qat");
    let o = smelt(&["qat", m, "--to", "int8", "--data", x, "-o", s(&out), "--batch", "8", "--steps", "15", "--json", "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (before, after) = (v["val_gap_before"].as_f64().unwrap(), v["val_gap_after"].as_f64().unwrap());
    eprintln!("tiny encoder, int8: validation 1 - cos {before:.2e} (post-training) -> {after:.2e} (QAT)");
    assert!(after < 0.7 * before, "QAT did not bring the int8 model closer: {before} -> {after}");
    assert_eq!(v["int8_matrices"].as_array().unwrap().len(), 4 * 2, "every matrix of the two layers");
    assert!(out.join("smelt_qat.json").exists() && out.join("training.html").exists() && out.join("model.safetensors").exists());
    let e = Command::new(env!("CARGO_BIN_EXE_smelt")).args(["embed", "-m", s(&out), "--int8", "-q"]).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().and_then(|mut c| {
        use std::io::Write;
        c.stdin.take().unwrap().write_all(b"the man plays\n")?;
        c.wait_with_output()
    });
    let e = e.unwrap();
    assert!(e.status.success() && !e.stdout.is_empty(), "{}", stderr(&e));

    // Wrong target for the kind of model, decoder-only options, an existing output: refused,
    // nothing written.
    let bad = d.join("bad");
    for (model, extra, says) in [(m, vec!["--to", "q4_0"], "int8"), (s(&files.gguf), vec!["--to", "int8"], "decoder"), (m, vec!["--to", "int8", "--imatrix", x], "decoders"), (m, vec!["--to", "int8", "--int8", "7.up"], "none")] {
        let mut args = vec!["qat", model, "--data", x, "-o", s(&bad), "--steps", "1", "-q"];
        args.extend(extra);
        let o = smelt(&args);
        assert!(!o.status.success() && stderr(&o).contains(says), "{args:?}: expected {says:?} in:\n{}", stderr(&o));
        assert!(!bad.exists(), "{args:?} wrote {}", bad.display());
    }
    let o = smelt(&["qat", m, "--to", "int8", "--data", x, "-o", s(&out), "--steps", "1", "-q"]);
    assert!(!o.status.success(), "an existing output directory was overwritten");
    std::fs::remove_dir_all(&d).ok();
}

/// `smelt qat` on the tiny decoder: the quantized model gets closer to the original on held-out
/// text, the file is a Q4_0 GGUF as the `gguf` package reads it (block matrices and embedding in
/// Q4_0, norms in F32, the same tensors as the source), other bytes than round-to-nearest; bad
/// settings are refused and nothing is written.
#[test]
fn qat_writes_a_quantized_gguf_closer_to_the_original() {
    let d = std::env::temp_dir().join(format!("smelt-finetune-test-{}-qat", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    let files = tiny::files(&d, 10);
    let text = d.join("text.txt");
    let words = ["hello", "world", "the", "man", "is", "playing", "guitar", "a", "plays"];
    let mut rng = tiny::Rng(5);
    let prose: Vec<&str> = (0..3000).map(|_| words[rng.below(words.len())]).collect();
    std::fs::write(&text, prose.join(" ")).unwrap();
    let (m, x) = (s(&files.gguf), s(&text));
    let out = d.join("q.gguf");
    let o = smelt(&["qat", m, "--to", "q4_0", "--data", x, "-o", s(&out), "--ctx", "32", "--batch", "4", "--steps", "12", "--lr", "3e-4", "--json", "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (before, after) = (v["val_kl_before"].as_f64().unwrap(), v["val_kl_after"].as_f64().unwrap());
    eprintln!("tiny decoder, Q4_0: validation KL {before:.5} (round-to-nearest) -> {after:.5} (QAT)");
    assert!(after < 0.8 * before, "QAT did not bring the quantized model closer: KL {before} -> {after}");
    assert!(d.join("q.gguf.qat.json").exists() && d.join("q.gguf.training.html").exists() && !d.join("q.gguf.ckpt").exists());

    // The gguf package's view of the written file.
    let python = std::env::var("SMELT_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = "import sys, gguf\nfor p in sys.argv[1:]:\n    r = gguf.GGUFReader(p)\n    print(' '.join(f'{t.name}:{t.tensor_type.name}' for t in r.tensors))";
    let rtn = d.join("rtn.gguf");
    let o = smelt(&["quantize", m, s(&rtn), "--to", "q4_0", "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = Command::new(python).args(["-c", script, m, s(&out), s(&rtn)]).output().expect("run python");
    assert!(o.status.success(), "{}", stderr(&o));
    let listing = String::from_utf8_lossy(&o.stdout).into_owned();
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 3);
    let names = |l: &str| -> Vec<String> { l.split(' ').map(|t| t.split(':').next().unwrap().to_string()).collect() };
    assert_eq!(names(lines[0]), names(lines[1]), "the QAT file has other tensors than its source");
    assert_eq!(lines[1], lines[2], "QAT and round-to-nearest Q4_0 files differ in types");
    for t in lines[1].split(' ') {
        let want = if t.contains("norm") { "F32" } else { "Q4_0" };
        assert!(t.ends_with(want), "{t}: expected {want}");
    }
    assert_ne!(std::fs::read(&out).unwrap(), std::fs::read(&rtn).unwrap(), "QAT wrote the round-to-nearest file");

    // --like: a mixed file (Q4_0 blocks, Q8_0 embedding) is the start and the plan; the output
    // keeps every tensor's type from it and gets closer to the original.
    let mixed = d.join("mixed.gguf");
    let o = smelt(&["quantize", m, s(&mixed), "--to", "q4_0", "--embed-type", "q8_0", "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let like_out = d.join("like.gguf");
    let o = smelt(&["qat", m, "--like", s(&mixed), "--data", x, "-o", s(&like_out), "--ctx", "32", "--batch", "4", "--steps", "12", "--lr", "3e-4", "--json", "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (before, after) = (v["val_kl_before"].as_f64().unwrap(), v["val_kl_after"].as_f64().unwrap());
    eprintln!("tiny decoder, --like a Q4_0 + Q8_0 file: validation KL {before:.5} -> {after:.5}");
    assert!(after < 0.8 * before, "QAT --like did not bring the model closer: KL {before} -> {after}");
    let o = Command::new(std::env::var("SMELT_PYTHON").unwrap_or_else(|_| "python3".into())).args(["-c", script, s(&mixed), s(&like_out)]).output().expect("run python");
    assert!(o.status.success(), "{}", stderr(&o));
    let listing = String::from_utf8_lossy(&o.stdout).into_owned();
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines[0], lines[1], "--like changed the tensors' types");
    assert!(lines[0].contains("token_embd.weight:Q8_0") && lines[0].contains("Q4_0"), "{}", lines[0]);

    let bad = d.join("bad.gguf");
    let short = d.join("short.gguf");
    let o = smelt(&["prune", m, "-o", s(&short), "--method", "layers", "--layers", "1", "--calib", x, "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for (extra, says) in [(vec!["--to", "q4_0", "--ctx", "1"], "--ctx"), (vec!["--to", "q4_0", "--batch", "60000"], "fewer than a batch"), (vec!["--to", "q4_0", "--imatrix", m], "importance"), (vec!["--like", s(&short)], "not a quantization"), (vec!["--like", s(&mixed), "--to", "q4_0"], "cannot be used with")] {
        let mut args = vec!["qat", m, "--data", x, "-o", s(&bad), "--steps", "1", "-q"];
        args.extend(extra);
        let o = smelt(&args);
        assert!(!o.status.success() && stderr(&o).contains(says), "{args:?}: expected {says:?} in:\n{}", stderr(&o));
        assert!(!bad.exists(), "{args:?} wrote {}", bad.display());
    }
    std::fs::remove_dir_all(&d).ok();
}

/// `smelt finetune ENCODER --pairs` on the tiny BERT: a sentence-transformers directory is
/// written that `smelt embed` loads, with the summary; training loss falls; bad pairs files and
/// mismatched models are refused with nothing written.
#[test]
fn finetune_an_encoder_on_pairs() {
    let d = std::env::temp_dir().join(format!("smelt-finetune-test-{}-pairs", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    let files = tiny::files(&d, 11);
    let words = ["hello", "world", "the", "man", "is", "playing", "guitar", "a", "plays"];
    let mut rng = tiny::Rng(3);
    let mut lines = String::new();
    for _ in 0..150 {
        let a: Vec<&str> = (0..5).map(|_| words[rng.below(words.len())]).collect();
        lines.push_str(&format!("{}\t{} hello\n", a.join(" "), a[..4].join(" ")));
    }
    let pairs = d.join("pairs.tsv");
    std::fs::write(&pairs, lines).unwrap();
    let out = d.join("tuned");
    let (m, p) = (s(&files.bert), s(&pairs));
    let o = smelt(&["finetune", m, "--pairs", p, "-o", s(&out), "--epochs", "2", "--batch", "8", "--lr", "1e-3", "--eval-every", "5", "--json", "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v["train_pairs"].as_u64(), v["val_pairs"].as_u64()), (Some(147), Some(3)));
    let log: Vec<serde_json::Value> = std::fs::read_to_string(d.join("tuned.train.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).filter(|r: &serde_json::Value| r.get("loss").is_some()).collect();
    let (first, last) = (log[0]["loss"].as_f64().unwrap(), log[log.len() - 1]["loss"].as_f64().unwrap());
    assert!(last < first, "the in-batch loss did not fall: {first} -> {last}");
    assert!(out.join("smelt_finetune.json").exists() && out.join("model.safetensors").exists());
    let e = Command::new(env!("CARGO_BIN_EXE_smelt")).args(["embed", "-m", s(&out), "-q"]).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().and_then(|mut c| {
        use std::io::Write;
        c.stdin.take().unwrap().write_all(b"the man plays\n")?;
        c.wait_with_output()
    });
    let e = e.unwrap();
    assert!(e.status.success(), "{}", stderr(&e));

    let bad = d.join("bad.tsv");
    std::fs::write(&bad, "one field only\n").unwrap();
    let one = d.join("one.tsv");
    std::fs::write(&one, "a\tb\n").unwrap();
    let o2 = d.join("o2");
    for (args, says) in [
        (vec!["finetune", m, "--pairs", s(&bad), "-o", s(&o2)], "line 1"),
        (vec!["finetune", m, "--pairs", s(&one), "-o", s(&o2)], "at least 2"),
        (vec!["finetune", s(&files.gguf), "--pairs", p, "-o", s(&o2)], "not a sentence encoder"),
        (vec!["finetune", m, "--data", p, "-o", s(&o2)], "--pairs"),
        (vec!["finetune", m, "--pairs", p, "-o", s(&out)], "not an empty"),
        (vec!["finetune", m, "--pairs", p, "-o", s(&o2), "--batch", "1"], "at least 2"),
    ] {
        let o = smelt(&args);
        let e = stderr(&o);
        assert!(!o.status.success() && e.contains(says), "{args:?}: expected {says:?} in:\n{e}");
        assert!(!o2.exists(), "{args:?} wrote {}", o2.display());
    }
    std::fs::remove_dir_all(&d).ok();
}
