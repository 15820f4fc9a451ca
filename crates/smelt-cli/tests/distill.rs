//! `smelt distill` as a user runs it, on the real all-MiniLM-L6-v2: a one-layer student is
//! trained and written, Ctrl-C writes a checkpoint that `--resume` (with `--recompute`) finishes
//! to the same weights as an uninterrupted run, and impossible inputs are refused with nothing written (a diverging run
//! is smelt-train's `tests/loop.rs`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

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

/// A scratch folder with a data text (Austen sentences).
fn setup(test: &str) -> (PathBuf, PathBuf, PathBuf) {
    let d = std::env::temp_dir().join(format!("smelt-distill-test-{}-{test}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    let austen = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/austen/persuasion.txt")).expect("../shared beside the repository");
    let data = d.join("data.txt");
    std::fs::write(&data, &austen[..30_000]).unwrap();
    let teacher = smelt_assets::ensure("all-minilm-l6-v2").unwrap();
    (d, data, teacher)
}

/// The common arguments of a small, quick run.
fn small<'a>(teacher: &'a Path, data: &'a Path, out: &'a Path, steps: &'a str) -> Vec<&'a str> {
    vec!["distill", "--teacher", s(teacher), "--keep-layers", "0", "--data", s(data), "-o", s(out), "--max-length", "24", "--batch", "4", "--steps", steps, "--eval-every", "0", "--seed", "9", "-q"]
}

#[test]
fn distill_writes_a_student_and_resumes_after_ctrl_c() {
    let (d, data, teacher) = setup("run");
    // An uninterrupted run.
    let whole = d.join("whole");
    let mut args = small(&teacher, &data, &whole, "300");
    args.push("--json");
    let o = smelt(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v["steps"].as_u64(), v["student_layers"].as_u64()), (Some(300), Some(1)));
    let (before, after) = (v["val_gap_before"].as_f64().unwrap(), v["val_gap_after"].as_f64().unwrap());
    assert!(after < before, "validation gap {before} -> {after}");
    assert!(whole.join("smelt_distill.json").exists() && whole.join("tokenizer.json").exists());
    let page = std::fs::read_to_string(whole.join("training.html")).unwrap();
    assert!(page.contains("class=\"series\"") && page.contains("val_gap_after"), "the report has the loss curve and the summary");
    assert!(!d.join("whole.ckpt").exists(), "the checkpoint of a finished run is removed");
    let log = std::fs::read_to_string(d.join("whole.train.jsonl")).unwrap();
    assert!(log.lines().count() >= 300, "a log line per step");
    // The student embeds.
    let texts = d.join("texts.txt");
    std::fs::write(&texts, "A man plays the guitar.\nThe weather was cold.\n").unwrap();
    let o = smelt(&["embed", "-m", s(&whole), s(&texts), "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 2);

    // Ctrl-C once the log shows a few steps: exit 130 with a checkpoint; --resume finishes.
    let part = d.join("part");
    let args = small(&teacher, &data, &part, "300");
    let child = Command::new(env!("CARGO_BIN_EXE_smelt")).args(&args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let log = d.join("part.train.jsonl");
    let start = Instant::now();
    while std::fs::read_to_string(&log).map(|l| l.lines().count()).unwrap_or(0) < 3 {
        assert!(start.elapsed() < Duration::from_secs(300), "no training steps logged within 300 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert!(stderr(&o).contains("--resume"), "{}", stderr(&o));
    assert!(d.join("part.ckpt").exists() && !part.exists());
    // Resumed with the activations recomputed in the backward: the same gradients, bit for bit.
    let mut args = small(&teacher, &data, &part, "300");
    args.extend(["--resume", "--recompute"]);
    let o = smelt(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read(part.join("model.safetensors")).unwrap() == std::fs::read(whole.join("model.safetensors")).unwrap(), "the resumed student differs from the uninterrupted one");
    std::fs::remove_dir_all(&d).ok();
}

/// A student from a config alone (one layer of 4 heads, a narrower FFN): it learns, and the
/// written directory has that shape and embeds.
#[test]
fn distill_a_student_from_a_config() {
    let (d, data, teacher) = setup("config");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(teacher.join("config.json")).unwrap()).unwrap();
    config["num_hidden_layers"] = 1.into();
    config["num_attention_heads"] = 4.into();
    config["intermediate_size"] = 384.into();
    let cfg = d.join("student.json");
    std::fs::write(&cfg, config.to_string()).unwrap();
    let out = d.join("out");
    let o = smelt(&["distill", "--teacher", s(&teacher), "--student", s(&cfg), "--data", s(&data), "-o", s(&out), "--max-length", "24", "--batch", "8", "--steps", "60", "--lr", "1e-3", "--eval-every", "0", "-q", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (before, after) = (v["val_gap_before"].as_f64().unwrap(), v["val_gap_after"].as_f64().unwrap());
    assert!(after < 0.8 * before, "validation gap {before} -> {after}");
    let written: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!((written["num_hidden_layers"].as_u64(), written["num_attention_heads"].as_u64(), written["intermediate_size"].as_u64()), (Some(1), Some(4), Some(384)));
    let texts = d.join("texts.txt");
    std::fs::write(&texts, "A man plays the guitar.\n").unwrap();
    let o = smelt(&["embed", "-m", s(&out), s(&texts), "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn impossible_inputs_are_refused_and_nothing_is_written() {
    let (d, data, teacher) = setup("bad");
    let out = d.join("out");
    let empty = d.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let bad_json = d.join("bad.jsonl");
    std::fs::write(&bad_json, "{\"text\": \"fine\"}\n{not json\n").unwrap();
    let occupied = d.join("occupied");
    std::fs::create_dir_all(&occupied).unwrap();
    std::fs::write(occupied.join("x"), "x").unwrap();
    // A student with another vocabulary and width (the tiny test BERT), and configs that
    // cannot make a student of this teacher.
    let other = d.join("other");
    tiny::bert(3).write(&other);
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(teacher.join("config.json")).unwrap()).unwrap();
    let (narrow, llama) = (d.join("narrow.json"), d.join("llama.json"));
    let mut c = config.clone();
    c["hidden_size"] = 256.into();
    std::fs::write(&narrow, c.to_string()).unwrap();
    c["model_type"] = "llama".into();
    std::fs::write(&llama, c.to_string()).unwrap();
    let (t, dt, o_) = (s(&teacher), s(&data), s(&out));
    for (args, says) in [
        (vec!["distill", "--teacher", t, "--keep-layers", "0", "--data", s(&empty), "-o", o_], "holds no texts"),
        (vec!["distill", "--teacher", t, "--keep-layers", "0", "--data", s(&bad_json), "-o", o_], "line 2"),
        (vec!["distill", "--teacher", t, "--keep-layers", "0,9", "--data", dt, "-o", o_], "below 6"),
        (vec!["distill", "--teacher", t, "--keep-layers", "3,1", "--data", dt, "-o", o_], "ascending"),
        (vec!["distill", "--teacher", t, "--layers", "6", "--data", dt, "-o", o_], "1 to 5"),
        (vec!["distill", "--teacher", t, "--data", dt, "-o", o_], "where the student comes from"),
        (vec!["distill", "--teacher", t, "--student", s(&other), "--data", dt, "-o", o_], "tokenize differently"),
        (vec!["distill", "--teacher", t, "--student", s(&narrow), "--data", dt, "-o", o_], "no projection"),
        (vec!["distill", "--teacher", t, "--student", s(&llama), "--data", dt, "-o", o_], "must be a BERT config"),
        (vec!["distill", "--teacher", t, "--keep-layers", "0", "--data", dt, "-o", s(&occupied)], "not an empty directory"),
        (vec!["distill", "--teacher", t, "--keep-layers", "0", "--data", dt, "-o", o_, "--hidden-weight", "1", "--layer-map", "0-1"], "STUDENT:TEACHER"),
        (vec!["distill", "--teacher", t, "--keep-layers", "0", "--data", dt, "-o", o_, "--hidden-weight", "1", "--layer-map", "0:7"], "layer map 0:7"),
        (vec!["distill", "--teacher", t, "--keep-layers", "0", "--data", dt, "-o", o_, "--cos-weight", "0"], "nothing to learn"),
        (vec!["distill", "--teacher", t, "--keep-layers", "0", "--data", dt, "-o", o_, "--batch", "60000"], "only"),
        (vec!["distill", "--teacher", t, "--keep-layers", "0", "--data", dt, "-o", o_, "--resume"], "checkpoint"),
    ] {
        let o = smelt(&args);
        let e = stderr(&o);
        assert!(!o.status.success() && e.contains(says), "{args:?}: expected {says:?} in:\n{e}");
        assert!(!out.exists(), "{args:?} left {}", out.display());
    }
    std::fs::remove_dir_all(&d).ok();
}

/// Decoders, on the tiny test Llama: a one-block student is trained and written as a GGUF that
/// `smelt run` loads; encoder-only flags and impossible students are refused.
#[test]
fn distill_a_tiny_decoder() {
    let d = std::env::temp_dir().join(format!("smelt-distill-test-{}-decoder", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    let files = tiny::files(&d, 5);
    let text = d.join("text.txt");
    std::fs::write(&text, "hello world, the man is playing the guitar. ".repeat(60)).unwrap();
    let out = d.join("student.gguf");
    let (t, x, o_) = (s(&files.gguf), s(&text), s(&out));
    let base = ["distill", "--teacher", t, "--data", x, "-o", o_, "--batch", "2", "-q"];
    let with = |extra: &[&str]| -> Vec<String> { base.iter().chain(extra).map(|a| a.to_string()).collect() };
    for (args, says) in [
        (with(&["--keep-layers", "0", "--hidden-weight", "1"]), "for sentence encoders"),
        (with(&["--keep-layers", "0", "--lines"]), "for sentence encoders"),
        (with(&["--keep-layers", "0", "--val", x]), "for sentence encoders"),
        (with(&["--keep-layers", "2"]), "below 2"),
        (with(&["--layers", "2"]), "1 to 1"),
        (with(&["--keep-layers", "0", "--temperature", "0"]), "temperature"),
        (with(&["--keep-layers", "0", "--ctx", "4000"]), "fewer than a batch"),
    ] {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = smelt(&refs);
        let e = stderr(&o);
        assert!(!o.status.success() && e.contains(says), "{args:?}: expected {says:?} in:\n{e}");
        assert!(!out.exists(), "{args:?} left {}", out.display());
    }
    let args = with(&["--keep-layers", "1", "--steps", "4", "--ctx", "16", "--json"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = smelt(&refs);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v["student_layers"].as_u64(), v["steps"].as_u64()), (Some(1), Some(4)));
    assert_eq!(v["removed_blocks"], serde_json::json!([0]));
    assert!(v["val_kl_after"].as_f64().unwrap().is_finite());
    let o = smelt(&["inspect", o_, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = smelt(&["run", "-m", o_, "--raw", "-p", "hello", "-n", "4", "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(d.join("student.gguf.training.html").exists() && d.join("student.gguf.distill.json").exists());
    std::fs::remove_dir_all(&d).ok();
}
