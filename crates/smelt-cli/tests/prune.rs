//! `smelt prune` on a tiny decoder: the written file holds the pruned block matrices (the
//! asked fraction of zeros per row or per matrix, N:M groups), every other tensor unchanged, and
//! it runs; bad settings are refused with a clear message and no output file.

mod tiny;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use smelt_formats::{GgmlType, GgufFile};

fn smelt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_smelt")).args(args).output().expect("run smelt")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A folder with the tiny model and a calibration text of several 64-token chunks.
fn setup(test: &str) -> (PathBuf, PathBuf, PathBuf) {
    let d = std::env::temp_dir().join(format!("smelt-prune-test-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let model = d.join("tiny.gguf");
    std::fs::write(&model, tiny::llama(9).to_bytes()).unwrap();
    let text = d.join("calib.txt");
    std::fs::write(&text, "the man is playing a guitar while the cat sleeps on a warm mat. ".repeat(120)).unwrap();
    (d, model, text)
}

fn prune(model: &Path, text: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["prune", s(model), "-o", s(out), "--calib", s(text), "--calib-ctx", "64", "--json", "-q"];
    args.extend_from_slice(extra);
    smelt(&args)
}

fn is_block_matrix(name: &str) -> bool {
    name.starts_with("blk.") && name.ends_with(".weight") && !name.contains("norm")
}

#[test]
fn pruned_files_hold_the_pattern_and_run() {
    let (d, model, text) = setup("ok");
    let src = GgufFile::open(&model).unwrap();
    let cases: [(&str, &[&str]); 5] = [
        ("magnitude", &["--sparsity", "0.5"]),
        ("wanda", &["--sparsity", "0.5"]),
        ("sparsegpt", &["--sparsity", "0.5", "--sequential"]),
        ("sparsegpt", &["--pattern", "2:4"]),
        // Q8_0 has no block minimum: the pruned zeros stay exact.
        ("wanda", &["--pattern", "2:4", "--then-quantize", "q8_0"]),
    ];
    for (i, (method, amount)) in cases.into_iter().enumerate() {
        let quantized = amount.contains(&"--then-quantize");
        let out = d.join(format!("{i}-{method}.gguf"));
        let mut extra = vec!["--method", method];
        extra.extend_from_slice(amount);
        let o = prune(&model, &text, &out, &extra);
        let what = format!("{method} {amount:?}");
        assert!(o.status.success(), "{what}: {}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["matrices"].as_array().unwrap().len(), 7 * tiny::LLAMA_LAYERS, "{what}");
        let f = GgufFile::open(&out).unwrap();
        for t in src.tensors() {
            let w = f.tensor(&t.name).unwrap_or_else(|| panic!("{what}: {} missing", t.name));
            if !is_block_matrix(&t.name) {
                assert_eq!(src.tensor_data(t), f.tensor_data(w), "{what}: {} changed", t.name);
                continue;
            }
            assert_eq!(w.ty, if quantized { GgmlType::Q8_0 } else { GgmlType::F32 }, "{what}: {}", t.name);
            let (orig, vals) = (src.tensor_f32(t).unwrap(), f.tensor_f32(w).unwrap());
            let cols = t.row_len() as usize;
            if amount[0] == "--pattern" {
                for (g, grp) in vals.chunks_exact(4).enumerate() {
                    assert!(grp.iter().filter(|x| **x == 0.0).count() >= 2, "{what}: {} group {g} keeps more than 2 of 4", t.name);
                }
            } else {
                let zeros = vals.iter().filter(|x| **x == 0.0).count();
                assert!(zeros >= vals.len() / 2, "{what}: {} has {zeros} zeros of {}", t.name, vals.len());
                if method == "wanda" {
                    // Per row: every row loses exactly half.
                    for (r, row) in vals.chunks_exact(cols).enumerate() {
                        assert!(row.iter().filter(|x| **x == 0.0).count() >= cols / 2, "{what}: {} row {r}", t.name);
                    }
                }
            }
            if method != "sparsegpt" && !quantized {
                // No weight update: what is kept is the source's value.
                assert!(vals.iter().zip(&orig).all(|(a, b)| *a == 0.0 || a == b), "{what}: {} kept values changed", t.name);
            }
        }
        let r = smelt(&["run", "-m", s(&out), "--raw", "-p", "the man", "-n", "4", "--temp", "0", "-q"]);
        assert!(r.status.success(), "{what}: the pruned file does not run: {}", String::from_utf8_lossy(&r.stderr));
    }
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn bad_settings_are_refused_and_write_nothing() {
    let (d, model, text) = setup("bad");
    let out = d.join("never.gguf");
    let cases: [(&[&str], u8, &str); 5] = [
        (&["--method", "wanda", "--sparsity", "1"], 2, "sparsity"),
        (&["--method", "magnitude", "--pattern", "4:4"], 2, "N:M"),
        (&["--method", "magnitude", "--pattern", "3:7"], 1, "multiple of 7"),
        (&["--method", "magnitude", "--sparsity", "0.5", "--pattern", "2:4"], 2, "cannot be used with"),
        (&["--method", "wanda"], 2, "--sparsity"),
    ];
    for (args, code, says) in cases {
        let o = prune(&model, &text, &out, args);
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(code as i32), "{args:?}: {e}");
        assert!(e.contains(says), "{args:?}: {e}");
        assert!(!out.exists(), "{args:?} left a file");
    }
    // Wanda without a calibration text.
    let o = smelt(&["prune", s(&model), "-o", s(&out), "--method", "wanda", "--sparsity", "0.5", "-q"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("--calib") && e.lines().count() == 1, "{e}");
    assert!(!out.exists());
    std::fs::remove_dir_all(&d).ok();
}

/// `--method layers`: the file has one block fewer, renumbered, each kept block's tensors the
/// source's own, and it runs; impossible counts are refused.
#[test]
fn removing_layers_renumbers_and_runs() {
    let (d, model, text) = setup("layers");
    let src = GgufFile::open(&model).unwrap();
    let out = d.join("layers.gguf");
    let o = prune(&model, &text, &out, &["--method", "layers", "--layers", "1", "--layer-score", "influence"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let removed = v["removed"].as_array().unwrap()[0].as_u64().unwrap() as usize;
    let kept = 1 - removed;
    let f = GgufFile::open(&out).unwrap();
    assert_eq!(f.header.get_u64("llama.block_count").unwrap(), (tiny::LLAMA_LAYERS - 1) as u64);
    for t in src.tensors() {
        let name = match t.name.strip_prefix(&format!("blk.{kept}.")) {
            Some(rest) => format!("blk.0.{rest}"),
            None if t.name.starts_with("blk.") => {
                assert!(f.tensor(&t.name.replace(&format!("blk.{removed}."), "blk.9.")).is_none());
                continue;
            }
            None => t.name.clone(),
        };
        let w = f.tensor(&name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(src.tensor_data(t), f.tensor_data(w), "{name}");
    }
    assert_eq!(f.tensors().len(), src.tensors().len() - 9, "one block of 9 tensors fewer");
    let r = smelt(&["run", "-m", s(&out), "--raw", "-p", "the man", "-n", "4", "--temp", "0", "-q"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    for (args, says) in [(&["--method", "layers", "--layers", "2"][..], "keep at least one"), (&["--method", "magnitude", "--layers", "1"][..], "--method layers")] {
        let bad = d.join("bad.gguf");
        let o = prune(&model, &text, &bad, args);
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {e}");
        assert!(e.contains(says) && e.lines().count() == 1, "{args:?}: {e}");
        assert!(!bad.exists());
    }
    std::fs::remove_dir_all(&d).ok();
}

/// `--method vocab`: the file keeps fewer tokens (its embedding fewer rows), runs, and the
/// corpus's text tokenizes to the same pieces; a missing corpus is refused.
#[test]
fn trimming_the_vocabulary_keeps_the_corpus() {
    let (d, model, text) = setup("vocab");
    let out = d.join("vocab.gguf");
    let o = smelt(&["prune", s(&model), "-o", s(&out), "--method", "vocab", "--corpus", s(&text), "--json", "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (before, after) = (v["vocab_before"].as_u64().unwrap(), v["vocab_after"].as_u64().unwrap());
    assert!(after < before, "{v}");
    let f = GgufFile::open(&out).unwrap();
    assert_eq!(f.tensor("token_embd.weight").unwrap().dims[1], after);
    let r = smelt(&["run", "-m", s(&out), "--raw", "-p", "the man is playing", "-n", "4", "--temp", "0", "-q"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let bad = d.join("bad.gguf");
    for args in [&["--method", "vocab"][..], &["--method", "vocab", "--corpus", s(&text), "--sparsity", "0.5"][..]] {
        let mut a = vec!["prune", s(&model), "-o", s(&bad), "-q"];
        a.extend_from_slice(args);
        let o = smelt(&a);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(matches!(o.status.code(), Some(1) | Some(2)) && e.contains("--corpus"), "{args:?}: {e}");
        assert!(!bad.exists());
    }
    std::fs::remove_dir_all(&d).ok();
}

/// `--method width`: FFN channels and head groups removed, the layers left with their own widths
/// (llama.cpp's `deci` with per-layer arrays when they differ), the refitted matrices with a
/// bias, and the file runs; impossible settings are refused and write nothing.
#[test]
fn width_pruning_writes_per_layer_shapes_and_runs() {
    let (d, model, text) = setup("width");
    let out = d.join("width.gguf");
    // One of the model's four key/value groups (global: the cheapest layer's), half the channels.
    let o = prune(&model, &text, &out, &["--method", "width", "--ffn", "0.5", "--heads", "0.25", "--allocation", "global"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let layers = v["layers"].as_array().unwrap();
    let kv: Vec<u64> = layers.iter().map(|l| l["after"]["kv_heads"].as_u64().unwrap()).collect();
    assert_eq!(kv.iter().sum::<u64>(), (2 * tiny::LLAMA_KV - 1) as u64, "{kv:?}");
    let ffn: u64 = layers.iter().map(|l| l["after"]["ffn"].as_u64().unwrap()).sum();
    assert_eq!(ffn, tiny::LLAMA_FFN as u64, "half of each layer's 64 channels, or the global choice rounded to 32s");
    let f = GgufFile::open(&out).unwrap();
    assert_eq!(f.header.architecture(), Some("deci"), "layers that differ need llama.cpp's per-layer graph");
    let heads = f.header.get("deci.attention.head_count_kv").and_then(|v| v.as_array()).expect("a per-layer array");
    assert_eq!(heads.len(), tiny::LLAMA_LAYERS);
    assert_eq!(f.header.get_u64("deci.attention.key_length").unwrap(), (tiny::LLAMA_D / tiny::LLAMA_HEADS) as u64);
    for l in 0..tiny::LLAMA_LAYERS {
        let (k, fd) = (kv[l] as usize, layers[l]["after"]["ffn"].as_u64().unwrap() as usize);
        let hd = tiny::LLAMA_D / tiny::LLAMA_HEADS;
        assert_eq!(f.tensor(&format!("blk.{l}.attn_k.weight")).unwrap().dims, vec![tiny::LLAMA_D as u64, (k * hd) as u64]);
        assert_eq!(f.tensor(&format!("blk.{l}.ffn_down.weight")).unwrap().dims, vec![fd as u64, tiny::LLAMA_D as u64]);
        assert!(f.tensor(&format!("blk.{l}.ffn_down.bias")).is_some(), "the refit's bias");
    }
    let r = smelt(&["run", "-m", s(&out), "--raw", "-p", "the man", "-n", "4", "--temp", "0", "-q"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    // Uniform, the same from every layer: the layers stay alike, a plain `llama` file.
    let o = prune(&model, &text, &out, &["--method", "ffn", "--sparsity", "0.5"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let f = GgufFile::open(&out).unwrap();
    assert_eq!(f.header.architecture(), Some("llama"));
    assert_eq!(f.header.get_u64("llama.feed_forward_length").unwrap(), 32);
    let bad: [(&[&str], &str); 4] = [
        (&["--method", "ffn", "--sparsity", "0.5", "--ffn", "0.2"], "--sparsity X"),
        (&["--method", "width", "--sparsity", "0.5"], "--ffn X and/or --heads Y"),
        (&["--method", "heads", "--sparsity", "0.5", "--pattern", "2:4"], "cannot be used with"),
        (&["--method", "wanda", "--heads", "0.5"], "--method width"),
    ];
    for (args, says) in bad {
        let never = d.join("never.gguf");
        let o = prune(&model, &text, &never, args);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && e.contains(says), "{args:?}: {e}");
        assert!(!never.exists(), "{args:?} left a file");
    }
    std::fs::remove_dir_all(&d).ok();
}

/// all-MiniLM-L6-v2, a scratch folder and a calibration text there (the first `chars` bytes of
/// Emma).
fn encoder_setup(test: &str, chars: usize) -> (PathBuf, PathBuf, PathBuf) {
    let src = smelt_assets::ensure("all-minilm-l6-v2").unwrap();
    let d = std::env::temp_dir().join(format!("smelt-prune-test-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let text = d.join("calib.txt");
    let austen = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/austen/emma.txt")).expect("../shared beside the repository");
    std::fs::write(&text, &austen[..chars]).unwrap();
    (src, d, text)
}

/// `--method ffn` on a sentence encoder (all-MiniLM-L6-v2): a new sentence-transformers
/// directory whose config has the smaller `intermediate_size`, whose side files are the
/// original's, and whose embeddings stay close to the original's (the OBS refit with a bias);
/// an existing non-empty output directory is refused.
#[test]
fn pruning_an_encoder_writes_a_smaller_bert() {
    let (src, d, text) = encoder_setup("encoder", 60_000);
    let out = d.join("pruned");
    let o = smelt(&["prune", s(&src), "-o", s(&out), "--method", "ffn", "--sparsity", "0.25", "--calib", s(&text), "--calib-chunks", "8", "--json", "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v["ffn_before"].as_u64(), v["ffn_after"].as_u64()), (Some(1536), Some(1152)));
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["intermediate_size"], 1152);
    for side in ["tokenizer.json", "modules.json", "1_Pooling/config.json", "sentence_bert_config.json"] {
        assert_eq!(std::fs::read(src.join(side)).unwrap(), std::fs::read(out.join(side)).unwrap(), "{side}");
    }
    let pool = smelt_kernels::pool::ThreadPool::new(2);
    let texts = ["A man is playing a guitar.", "The weather in the mountains was cold and wet all week.", "She had never been so happy in her life.", "Stock markets fell sharply on Monday."];
    let embed = |dir: &Path| smelt_models::Encoder::load(dir, None).unwrap().embed(&pool, &texts, &Default::default()).unwrap();
    let (a, b) = (embed(&src), embed(&out));
    for (x, y) in a.iter().zip(&b) {
        let cos = x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>() / (x.iter().map(|p| p * p).sum::<f32>().sqrt() * y.iter().map(|q| q * q).sum::<f32>().sqrt());
        assert!(cos > 0.85, "cosine to the original {cos} (0.91 when written: 256 calibration sentences)");
    }
    let o = smelt(&["prune", s(&src), "-o", s(&out), "--method", "ffn", "--sparsity", "0.25", "--calib", s(&text), "-q"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("not an empty directory"), "{e}");
    std::fs::remove_dir_all(&d).ok();
}

/// Heads and layers of a sentence encoder: `--method width --heads --layers` writes a BERT
/// directory with `pruned_heads` and fewer layers that smelt embeds with; impossible requests
/// (every head of a layer, every layer, flags for other methods) are refused before anything is
/// written.
#[test]
fn pruning_encoder_heads_and_layers() {
    let (src, d, text) = encoder_setup("encoder-heads", 40_000);
    let out = d.join("pruned");
    for (extra, says) in [
        (&["--method", "heads", "--sparsity", "0.99"][..], "leaves it none"),
        (&["--method", "layers", "--layers", "6"][..], "keep at least one"),
        (&["--method", "layers", "--sparsity", "0.5", "--layers", "2"][..], "--layers N or --sparsity X"),
        (&["--method", "ffn", "--sparsity", "0.3", "--owl"][..], "not --pattern, --scope, --sequential, --owl"),
        (&["--method", "ffn", "--sparsity", "0.3", "--allocation", "global"][..], "--allocation"),
    ] {
        let mut args = vec!["prune", s(&src), "-o", s(&out), "--calib", s(&text), "-q"];
        args.extend_from_slice(extra);
        let o = smelt(&args);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && e.contains(says), "{extra:?}: {e}");
        assert!(!out.exists(), "{extra:?} left {}", out.display());
    }
    let o = smelt(&["prune", s(&src), "-o", s(&out), "--method", "width", "--heads", "0.25", "--layers", "1", "--calib", s(&text), "--calib-chunks", "4", "--json", "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["heads_after"], serde_json::json!([9, 9, 9, 9, 9]));
    assert_eq!(v["removed_layers"].as_array().map(Vec::len), Some(1));
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["num_hidden_layers"], 5);
    assert_eq!(cfg["pruned_heads"].as_object().map(|m| m.len()), Some(5));
    let lines = d.join("lines.txt");
    std::fs::write(&lines, "A man is playing a guitar.\nStock markets fell sharply on Monday.\n").unwrap();
    let o = smelt(&["embed", "-m", s(&out), s(&lines), "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r["embedding"].as_array().map(Vec::len) == Some(384)), "{rows:?}");
    std::fs::remove_dir_all(&d).ok();
}

/// `smelt eval` on a pruned file reports its zeros, and `--save-logits` writes
/// llama-perplexity's KL-divergence base (magic, context, vocabulary, chunks, the tokens, one
/// record per scored position); with a reference it is refused.
#[test]
fn eval_reports_sparsity_and_saves_logits() {
    let (d, model, text) = setup("evalzeros");
    let out = d.join("wanda.gguf");
    assert!(prune(&model, &text, &out, &["--method", "wanda", "--sparsity", "0.5"]).status.success());
    let kld = d.join("base.kld");
    let o = smelt(&["eval", s(&out), "--text", s(&text), "--ctx", "64", "--chunks", "2", "--no-speed", "--format", "json", "-q", "--save-logits", s(&kld)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let z = v["models"][0]["zero_fraction"].as_f64().unwrap();
    assert!((z - 0.5).abs() < 0.01, "zero fraction {z}");
    let bytes = std::fs::read(&kld).unwrap();
    assert_eq!(&bytes[..8], b"_logits_");
    let int = |at: usize| i32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let (ctx, vocab, chunks) = (int(8), int(12), int(16));
    assert_eq!((ctx, chunks), (64, 2));
    let nv = 2 * vocab.div_ceil(2) + 4;
    assert_eq!(bytes.len(), 20 + 4 * chunks * ctx + 2 * chunks * (ctx - 1 - ctx / 2) * nv);
    let o = smelt(&["eval", s(&out), "--against", s(&model), "--text", s(&text), "--ctx", "64", "--chunks", "2", "--no-speed", "-q", "--save-logits", s(&d.join("never.kld"))]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("one model"));
    assert!(!d.join("never.kld").exists());
    std::fs::remove_dir_all(&d).ok();
}

/// smelt's 2:4 sparse type on the real model: a magnitude 2:4 pruning written as Q4_0_S24 holds
/// every block matrix in it (the embedding untouched), `inspect` says only smelt reads it, its
/// logits match those of its exact F32 expansion (the reference dequantizer, through
/// `smelt quantize --to f32`) up to the activations' 8-bit rounding, and the type is refused
/// where it would prune: after unstructured pruning, and on dense matrices in `smelt quantize`
/// (which writes the dense twin there).
#[test]
fn a_2_4_model_stored_sparse_runs_as_its_f32_expansion() {
    let d = std::env::temp_dir().join(format!("smelt-prune-test-{}-s24", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let (sparse, expanded, never, dense) = (d.join("s24.gguf"), d.join("f32.gguf"), d.join("never.gguf"), d.join("dense.gguf"));
    let o = smelt(&["prune", "smollm2-135m", "-o", s(&sparse), "--method", "magnitude", "--pattern", "2:4", "--then-quantize", "q4_0_s24", "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let f = GgufFile::open(&sparse).unwrap();
    for t in f.tensors() {
        let want = if is_block_matrix(&t.name) { GgmlType::Q4_0_S24 } else if t.name == "token_embd.weight" { GgmlType::Q8_0 } else { t.ty };
        assert_eq!(t.ty, want, "{}", t.name);
    }
    let o = smelt(&["inspect", s(&sparse), "--summary"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("smelt only"), "{}", String::from_utf8_lossy(&o.stdout));

    let o = smelt(&["quantize", s(&sparse), s(&expanded), "--to", "f32", "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = d.join("text.txt");
    std::fs::write(&text, std::fs::read_to_string("../../../shared/data/austen/persuasion.txt").unwrap_or_else(|_| "It was a fine day in Bath. ".repeat(200)).chars().take(6000).collect::<String>()).unwrap();
    let o = smelt(&["eval", s(&sparse), "--against", s(&expanded), "--text", s(&text), "--ctx", "128", "--chunks", "3", "--no-speed", "--format", "json", "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let m = v["models"].as_array().unwrap().iter().find(|m| m["reference"] != true).unwrap().clone();
    let (kld, top) = (m["lm"]["vs_ref"]["kld_mean"].as_f64().unwrap(), m["lm"]["vs_ref"]["same_top"].as_f64().unwrap());
    assert!(kld < 2e-3 && top > 0.95, "sparse kernels vs the F32 expansion: KLD {kld}, same top {top}");

    let o = smelt(&["prune", "smollm2-135m", "-o", s(&never), "--method", "magnitude", "--sparsity", "0.5", "--then-quantize", "q4_0_s24", "-q"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("--pattern 2:4") && !never.exists(), "{e}");
    let o = smelt(&["quantize", "smollm2-135m", s(&dense), "--to", "q4_0_s24", "--embed-type", "q8_0"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("not 2:4 sparse"), "{}", String::from_utf8_lossy(&o.stdout));
    assert!(GgufFile::open(&dense).unwrap().tensors().iter().all(|t| !t.ty.is_sparse()));
    std::fs::remove_dir_all(&d).ok();
}
