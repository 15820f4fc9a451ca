//! `smelt embed` and `smelt classify` run as users run them: real all-MiniLM-L6-v2, real files,
//! hostile input, exit codes.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use smelt_formats::npy::read_npy;

fn smelt_in(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_smelt")).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run smelt");
    let mut pipe = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = pipe.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("smelt-encoder-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn rows(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn vector(v: &serde_json::Value) -> Vec<f32> {
    v["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

#[test]
fn embed_echoes_ids_in_order_and_npy_holds_the_same_vectors() {
    let input = "{\"id\": \"a\", \"text\": \"A man is playing a guitar.\"}\n\"Just a string\"\n{\"id\": 7, \"text\": \"\"}\n";
    let o = smelt_in(&["embed", "-q", "--input", "jsonl"], input.as_bytes());
    assert!(o.status.success(), "{}", stderr(&o));
    let r = rows(&o);
    assert_eq!(r.len(), 3);
    assert_eq!((r[0]["id"].as_str(), r[1].get("id"), r[2]["id"].as_i64()), (Some("a"), None, Some(7)));
    for (i, row) in r.iter().enumerate() {
        assert_eq!(row["index"], i);
        let v = vector(row);
        assert_eq!(v.len(), 384);
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "all-MiniLM-L6-v2 normalizes: {norm}");
    }
    let npy = tmp("three.npy");
    let o = smelt_in(&["embed", "-q", "--input", "jsonl", "-o", npy.to_str().unwrap()], input.as_bytes());
    assert!(o.status.success(), "{}", stderr(&o));
    let a = read_npy(&std::fs::read(&npy).unwrap()).unwrap();
    assert_eq!(a.shape, [3, 384]);
    let data = a.data.to_f32();
    for (i, row) in r.iter().enumerate() {
        let v = vector(row);
        assert!(v.iter().zip(&data[i * 384..(i + 1) * 384]).all(|(x, y)| (x - y).abs() < 1e-6));
    }
}

#[test]
fn embed_takes_odd_text_and_refuses_bad_input_without_touching_the_output() {
    // Empty, whitespace only, control characters, a 1 MB line: defined output, one row each.
    let big = "word ".repeat(200_000);
    let input = format!("\n   \t \n\u{1}\u{7}\u{1b}[31m\n{big}\n");
    let o = smelt_in(&["embed", "-q"], input.as_bytes());
    assert!(o.status.success(), "{}", stderr(&o));
    let r = rows(&o);
    assert_eq!(r.len(), 4);
    assert!(r.iter().all(|row| vector(row).iter().all(|x| x.is_finite())));

    let out = tmp("keep.jsonl");
    std::fs::write(&out, b"precious\n").unwrap();
    let bad_utf8 = b"fine\nbad \xff\xfe byte\n";
    let o = smelt_in(&["embed", "-q", "-o", out.to_str().unwrap()], bad_utf8);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("line 2 is not valid UTF-8"), "{}", stderr(&o));
    let o = smelt_in(&["embed", "-q", "--input", "jsonl", "-o", out.to_str().unwrap()], b"{\"text\": \"ok\"}\n{\"text\": oops}\n");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("line 2 is not valid JSON"), "{}", stderr(&o));
    let o = smelt_in(&["embed", "-q", "--input", "jsonl", "-o", out.to_str().unwrap()], b"{\"txt\": \"no text field\"}\n");
    assert!(!o.status.success() && stderr(&o).contains("\"text\""), "{}", stderr(&o));
    assert_eq!(std::fs::read(&out).unwrap(), b"precious\n", "a failed run must leave the output alone");
}

#[test]
fn embed_streams_one_line_at_a_time() {
    let o = smelt_in(&["embed", "-q", "--stream"], b"first\nsecond\nthird\n");
    assert!(o.status.success(), "{}", stderr(&o));
    let r = rows(&o);
    assert_eq!(r.iter().map(|v| v["index"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 1, 2]);
    let batch = rows(&smelt_in(&["embed", "-q"], b"first\nsecond\nthird\n"));
    for (a, b) in r.iter().zip(&batch) {
        assert!(vector(a).iter().zip(vector(b)).all(|(x, y)| (x - y).abs() < 1e-5), "streaming and batching agree");
    }
}

#[test]
fn int8_embeddings_stay_close_to_fp32() {
    let texts = b"The weather is lovely today.\nStock markets fell sharply on Monday.\nHe plays the violin beautifully.\n";
    let (f, q) = (rows(&smelt_in(&["embed", "-q"], texts)), rows(&smelt_in(&["embed", "-q", "--int8"], texts)));
    assert_eq!(f.len(), 3);
    for (a, b) in f.iter().zip(&q) {
        let (a, b) = (vector(a), vector(b));
        let cos: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!(cos > 0.99 && cos < 0.999_999, "int8 should be close to fp32 but not identical: {cos}");
    }
    let o = smelt_in(&["embed", "-q", "--int8", "9.zz"], b"x\n");
    assert!(!o.status.success() && stderr(&o).contains("bad int8 item"), "{}", stderr(&o));
}

/// The two classification tasks of ASSETS.md end to end: fetch (scripts/fetch-classification-data,
/// with the split kept in data/splits), train a head on the train split, evaluate on the test
/// split. The accuracies are far above chance (5 topics: 0.2; 2 sentiments: 0.5) and near what
/// a logistic regression on these embeddings reaches (docs/BENCHMARKS.md).
#[test]
fn classify_trains_and_evaluates_bbc_news_and_movie_sentiment() {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    let python = std::env::var("SMELT_PYTHON").unwrap_or_else(|_| "python3".into());
    let fetched = Command::new(python).arg(root.join("scripts/fetch-classification-data")).output().expect("run python");
    assert!(fetched.status.success(), "{}", stderr(&fetched));
    let dirs: Vec<PathBuf> = String::from_utf8_lossy(&fetched.stdout).lines().map(PathBuf::from).collect();
    assert_eq!(dirs.len(), 2);
    for (dir, min_accuracy) in dirs.iter().zip([0.95, 0.75]) {
        let head = tmp(&format!("{}.head.json", dir.file_name().unwrap().to_string_lossy()));
        let o = smelt_in(&["classify", "train", "-q", dir.join("train.jsonl").to_str().unwrap(), "-o", head.to_str().unwrap()], b"");
        assert!(o.status.success(), "{}", stderr(&o));
        let o = smelt_in(&["classify", "eval", "-q", "--json", "--head", head.to_str().unwrap(), dir.join("test.jsonl").to_str().unwrap()], b"");
        assert!(o.status.success(), "{}", stderr(&o));
        let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let acc = m["accuracy"].as_f64().unwrap();
        eprintln!("{}: test accuracy {acc:.4}, macro F1 {:.4}", dir.display(), m["macro_f1"].as_f64().unwrap());
        assert!(acc >= min_accuracy, "{}: accuracy {acc}", dir.display());
        let support: u64 = m["classes"].as_array().unwrap().iter().map(|c| c["support"].as_u64().unwrap()).sum();
        assert_eq!(support, m["examples"].as_u64().unwrap());
    }
    let head = tmp("movie-sentiment.head.json");
    let o = smelt_in(&["classify", "predict", "-q", "--head", head.to_str().unwrap()], b"A wonderful, moving film with superb acting.\nDull, overlong and badly written.\n");
    assert!(o.status.success(), "{}", stderr(&o));
    let r = rows(&o);
    assert_eq!((r[0]["label"].as_str(), r[1]["label"].as_str()), (Some("positive"), Some("negative")));
    let bad = tmp("bad.head.json");
    std::fs::write(&bad, b"{\"format\": \"smelt-classifier-head\", \"version\": 99}").unwrap();
    let o = smelt_in(&["classify", "predict", "-q", "--head", bad.to_str().unwrap()], b"x\n");
    assert!(!o.status.success() && stderr(&o).contains("not a smelt classifier head"), "{}", stderr(&o));
}
