//! `smelt fit` on a tiny decoder: the written file meets the budget and holds the plan it
//! reports, the front runs from small and lossy to large and lossless, a budget that holds the
//! source keeps it exactly, and impossible goals are refused before anything is written.

mod tiny;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use smelt_formats::{GgmlType, GgufFile};

fn smelt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_smelt"))
        .args(args)
        .output()
        .expect("run smelt")
}

/// A folder per test (tests run in parallel).
fn dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("smelt-fit-test-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The tiny model and a calibration text of several 64-token chunks.
fn setup(test: &str) -> (PathBuf, PathBuf) {
    let d = dir(test);
    let model = d.join("tiny.gguf");
    std::fs::write(&model, tiny::llama(5).to_bytes()).unwrap();
    let text = d.join("calib.txt");
    std::fs::write(
        &text,
        "the man is playing a guitar while the cat sleeps on a warm mat. ".repeat(120),
    )
    .unwrap();
    (model, text)
}

fn fit(model: &Path, text: &Path, out: &Path, goal: &[&str]) -> Output {
    let mut args = vec![
        "fit",
        s(model),
        "--calib",
        s(text),
        "--calib-ctx",
        "64",
        "--probe-chunks",
        "1",
        "--front-checks",
        "3",
        "-o",
        s(out),
        "--json",
        "-q",
    ];
    args.extend_from_slice(goal);
    smelt(&args)
}

#[test]
fn a_budget_is_met_and_the_file_holds_the_reported_plan() {
    let (model, text) = setup("budget");
    let src = GgufFile::open(&model).unwrap();
    let budget = src.header.file_len * 45 / 100;
    let out = dir("budget").join("fit.gguf");
    let o = fit(&model, &text, &out, &["--max-size", &budget.to_string()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let written = std::fs::metadata(&out).unwrap().len();
    assert!(written <= budget, "{written} > {budget}");
    assert_eq!(v["file_bytes"].as_u64(), Some(written));
    let f = GgufFile::open(&out).unwrap();
    let plan = v["plan"].as_array().unwrap();
    assert_eq!(plan.len(), 2 * 7 + 1, "every matrix and the embedding");
    for p in plan {
        let t = f.tensor(p["name"].as_str().unwrap()).unwrap();
        assert_eq!(t.ty.name(), p["to"].as_str().unwrap(), "{}", p["name"]);
        assert_eq!(t.n_bytes, p["bytes"].as_u64().unwrap());
        // The chosen candidate is one of those listed, and "keep" loses nothing.
        let c = p["candidates"].as_array().unwrap();
        assert!(c.iter().any(|c| c["type"] == p["to"]));
        assert!(c
            .iter()
            .filter(|c| c["kept"] == true)
            .all(|c| c["predicted_kld"] == 0.0 && c["type"] == "F32"));
    }
    // 45% of an F32 file needs quantized matrices: a real loss, predicted and measured.
    assert!(f.tensors().iter().any(|t| t.ty != GgmlType::F32));
    assert!(
        v["predicted_kld"].as_f64().unwrap() > 0.0 && v["measured_kld"].as_f64().unwrap() > 0.0,
        "{v}"
    );
    // The front: sizes grow while the predicted loss falls, down to 0 (everything kept).
    let front = v["front"].as_array().unwrap();
    for w in front.windows(2) {
        assert!(w[1]["file_bytes"].as_u64() > w[0]["file_bytes"].as_u64());
        assert!(w[1]["predicted_kld"].as_f64() < w[0]["predicted_kld"].as_f64());
    }
    assert_eq!(front.last().unwrap()["predicted_kld"].as_f64(), Some(0.0));
    assert!(front.iter().filter(|p| p["measured_kld"].is_f64()).count() >= 2);
}

#[test]
fn a_budget_that_holds_the_source_keeps_it_exactly() {
    let (model, text) = setup("same");
    let out = dir("same").join("same.gguf");
    let len = GgufFile::open(&model).unwrap().header.file_len;
    let o = fit(
        &model,
        &text,
        &out,
        &["--max-size", &(len + 4096).to_string()],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // Nothing changed, nothing lost: the logits are the same; only the reference's log-probs,
    // held in f32, round.
    assert!(
        v["measured_kld"].as_f64().unwrap().abs() < 1e-6,
        "{}",
        v["measured_kld"]
    );
    let (a, b) = (
        GgufFile::open(&model).unwrap(),
        GgufFile::open(&out).unwrap(),
    );
    for t in a.tensors() {
        assert_eq!(
            a.tensor_data(t),
            b.tensor_data(b.tensor(&t.name).unwrap()),
            "{}",
            t.name
        );
    }
    // The smallest file at zero predicted loss is the same.
    let o = fit(&model, &text, &out, &["--min-quality", "0"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["predicted_kld"].as_f64(), Some(0.0));
    assert!(v["measured_kld"].as_f64().unwrap().abs() < 1e-6);
}

#[test]
fn awq_fit_writes_the_scaled_model_it_measured() {
    let (model, text) = setup("awq");
    let src = GgufFile::open(&model).unwrap();
    let budget = src.header.file_len * 45 / 100;
    let out = dir("awq").join("awq.gguf");
    let o = fit(&model, &text, &out, &["--max-size", &budget.to_string(), "--awq", "--awq-type", "iq4_nl", "--awq-grid", "8"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(std::fs::metadata(&out).unwrap().len() <= budget);
    assert!(v["awq_check"].is_null(), "AWQ first is not checked against the unscaled mix: {}", v["awq_check"]);
    let awq = &v["awq"];
    assert_eq!(awq["groups"].as_u64(), Some(4 * 2), "{awq}");
    assert!(awq["scaled"].as_u64().unwrap() >= 1 && awq["calibration_error_ratio"].as_f64().unwrap() < 1.0, "{awq}");
    // A scaled matrix cannot be kept as it is; the norms its scales fold into are rescaled.
    let f = GgufFile::open(&out).unwrap();
    let scaled_norms = ["attn_norm", "ffn_norm"]
        .iter()
        .flat_map(|n| (0..2).map(move |l| format!("blk.{l}.{n}.weight")))
        .filter(|n| src.tensor_f32(src.tensor(n).unwrap()).unwrap() != f.tensor_f32(f.tensor(n).unwrap()).unwrap())
        .count();
    assert!(scaled_norms >= 1, "no norm was rescaled");
    // What was written is the model that was measured: its KLD on the calibration text (other
    // positions than the fit's held chunk) is of the same size as the measured one.
    let o = smelt(&["eval", s(&out), "--against", s(&model), "--text", s(&text), "--ctx", "64", "--chunks", "4", "--no-speed", "--format", "json", "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let written = e["models"][1]["lm"]["vs_ref"]["kld_mean"].as_f64().unwrap();
    let measured = v["measured_kld"].as_f64().unwrap();
    assert!(measured > 0.0 && written > measured / 4.0 && written < measured * 4.0, "written file's KLD {written}, measured in the fit {measured}");
}

/// AWQ after the mix: both mixes are measured on the held chunks and the written file is the
/// better one; when that is the scaled one, a norm was rescaled and only matrices the mix
/// re-quantizes are scaled (every kept matrix is byte for byte the source's).
#[test]
fn awq_after_the_mix_writes_the_better_measured_mix() {
    let (model, text) = setup("awq-after");
    let src = GgufFile::open(&model).unwrap();
    let budget = src.header.file_len * 45 / 100;
    let out = dir("awq-after").join("awq.gguf");
    let o = fit(&model, &text, &out, &["--max-size", &budget.to_string(), "--awq", "--awq-grid", "8"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(std::fs::metadata(&out).unwrap().len() <= budget);
    let check = &v["awq_check"];
    let (without, with) = (check["measured_kld_unscaled"].as_f64().unwrap(), check["measured_kld_scaled"].as_f64().unwrap());
    let scaled = check["scaled_written"].as_bool().unwrap();
    assert_eq!(scaled, with < without, "{check}");
    assert_eq!(v["measured_kld"].as_f64().unwrap(), if scaled { with } else { without }, "{check}");
    assert_eq!(v["awq"].is_null(), !scaled, "{}", v["awq"]);
    let f = GgufFile::open(&out).unwrap();
    let kept: Vec<&str> = v["plan"].as_array().unwrap().iter().filter(|p| p["kept"].as_bool() == Some(true)).map(|p| p["name"].as_str().unwrap()).collect();
    for name in &kept {
        let (a, b) = (src.tensor(name).unwrap(), f.tensor(name).unwrap());
        assert_eq!(src.tensor_data(a), f.tensor_data(b), "{name} is kept but was changed");
    }
    if scaled {
        let rescaled = ["attn_norm", "ffn_norm"].iter().flat_map(|n| (0..2).map(move |l| format!("blk.{l}.{n}.weight"))).any(|n| src.tensor_f32(src.tensor(&n).unwrap()).unwrap() != f.tensor_f32(f.tensor(&n).unwrap()).unwrap());
        let rows_scaled = (0..2).flat_map(|l| [format!("blk.{l}.attn_v.weight"), format!("blk.{l}.ffn_up.weight")]).any(|n| !kept.contains(&n.as_str()));
        assert!(rescaled || rows_scaled, "the scaled mix was written but nothing was rescaled");
    }
}

/// The output head (the tiny model's tied embedding) gets GPTQ candidates beside its weighted
/// ones, every one measured alone; with Q4_0 as the only type and the smallest file asked for,
/// the mix differs from one without them only in the head, which is GPTQ's exactly when GPTQ's
/// Q4_0 measured lower.
#[test]
fn the_head_gets_measured_gptq_candidates() {
    let (model, _) = setup("head-gptq");
    let d = dir("head-gptq");
    // Varied text (a fixed pseudo-random walk over a few words): the head's input then spans
    // more directions than the repeated sentence gives.
    let words = ["the", "man", "is", "playing", "a", "guitar", "while", "cat", "sleeps", "on", "warm", "mat", "and", "dog", "runs", "."];
    let mut x = 12345u64;
    let walk: Vec<&str> = (0..1600).map(|_| { x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); words[(x >> 60) as usize] }).collect();
    let text = d.join("varied.txt");
    std::fs::write(&text, walk.join(" ")).unwrap();
    let (with, without) = (d.join("with.gguf"), d.join("without.gguf"));
    let goal = ["--types", "q4_0", "--min-quality", "100"];
    let o = fit(&model, &text, &with, &goal);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let o = fit(&model, &text, &without, &[&goal[..], &["--no-head-gptq"]].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let u: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let head = |v: &serde_json::Value| v["plan"].as_array().unwrap().iter().find(|p| p["name"] == "token_embd.weight").unwrap().clone();
    let (h, hu) = (head(&v), head(&u));
    assert_eq!(h["every_candidate_measured"], true, "{h}");
    assert_eq!(hu["every_candidate_measured"], false, "{hu}");
    let c = h["candidates"].as_array().unwrap();
    let q4 = |gptq: bool| c.iter().find(|c| c["type"] == "Q4_0" && c["gptq"] == gptq).unwrap_or_else(|| panic!("no Q4_0 gptq={gptq}: {h}"))["predicted_kld"].as_f64().unwrap();
    let (g, w) = (q4(true), q4(false));
    eprintln!("head Q4_0 measured alone: GPTQ {g}, weighted {w}");
    assert!(g > 0.0 && w > 0.0 && g != w, "both measured: GPTQ {g}, weighted {w}");
    // The weighted candidate's loss is the same measurement in both runs (same probe chunk).
    let wu = hu["candidates"].as_array().unwrap().iter().find(|c| c["type"] == "Q4_0").unwrap()["predicted_kld"].as_f64().unwrap();
    assert!((wu - w).abs() <= 1e-6 * w.max(1e-9), "{wu} vs {w}");
    assert_eq!(h["to"], "Q4_0");
    assert_eq!(h["gptq"], g < w, "the lower measured Q4_0 is chosen: GPTQ {g}, weighted {w}");
    assert_eq!(hu["gptq"], false);
    let (a, b) = (GgufFile::open(&with).unwrap(), GgufFile::open(&without).unwrap());
    for t in a.tensors() {
        let same = a.tensor_data(t) == b.tensor_data(b.tensor(&t.name).unwrap());
        let head_gptq = t.name == "token_embd.weight" && g < w;
        assert_eq!(same, !head_gptq, "{}", t.name);
    }
    if g < w {
        assert!(v["measured_kld"].as_f64() != u["measured_kld"].as_f64());
    }
}

#[test]
fn impossible_goals_are_refused_and_write_nothing() {
    let (model, text) = setup("none");
    let out = dir("none").join("none.gguf");
    for goal in [["--max-size", "1kB"], ["--max-bpw", "0.5"]] {
        let o = fit(&model, &text, &out, &goal);
        assert_eq!(o.status.code(), Some(1), "{goal:?}");
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(
            e.contains("below the smallest file") && e.lines().count() == 1,
            "{e}"
        );
        assert!(!out.exists());
    }
    for (goal, why) in [
        (["--max-size", "-5MB"], "size"),
        (["--max-size", "80 parsecs"], "unit"),
        (["--min-quality", "nan"], "min-quality"),
    ] {
        let o = fit(&model, &text, &out, &goal);
        assert_eq!(o.status.code(), Some(2), "{goal:?}");
        assert!(String::from_utf8_lossy(&o.stderr).contains(why), "{goal:?}");
    }
    let o = smelt(&["fit", s(&model), "--calib", s(&text), "-o", s(&out)]);
    assert_eq!(o.status.code(), Some(2), "a goal is required");
    assert!(!out.exists());
}

#[test]
fn shrink_adds_calibrated_variants_within_their_sizes() {
    let (model, text) = setup("shrink");
    let d = dir("shrink");
    let report = d.join("r.json");
    let len = GgufFile::open(&model).unwrap().header.file_len;
    let o = smelt(&["shrink", s(&model), "--types", "q8_0", "--fit", "60%,40%", "--ctx", "128", "--chunks", "2", "--no-speed", "--out-dir", s(&d), "-o", s(&report), "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let models = rec["models"].as_array().unwrap();
    let fits: Vec<&serde_json::Value> = models.iter().filter(|m| m["name"].as_str().unwrap().starts_with("fit ")).collect();
    assert_eq!(fits.len(), 2, "{:?}", models.iter().map(|m| &m["name"]).collect::<Vec<_>>());
    for (m, frac) in fits.iter().zip([0.6, 0.4]) {
        let size = m["file_bytes"].as_u64().unwrap();
        assert!(size as f64 <= frac * len as f64, "{size} > {frac} x {len}");
        assert!(m["lm"]["vs_ref"]["kld_mean"].as_f64().unwrap() > 0.0);
    }
    // The smaller one loses more.
    let kld = |m: &serde_json::Value| m["lm"]["vs_ref"]["kld_mean"].as_f64().unwrap();
    assert!(kld(fits[1]) > kld(fits[0]));
    assert!(rec["notes"].as_array().unwrap().iter().any(|n| n.as_str().unwrap().contains("Sense and Sensibility")));
    // Calibrating on the evaluation text is refused.
    let o = smelt(&["shrink", s(&model), "--types", "q8_0", "--calib", s(&text), "--text", s(&text), "--ctx", "128", "--no-speed", "--out-dir", s(&d), "-q"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is the evaluation text"));
}
