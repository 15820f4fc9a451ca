//! The generated hostile-input suite, continued: every kind of output path for every command
//! that writes a file (regular, existing, symlinked, dangling link, device, full device, FIFO,
//! directory, missing folder), and the inputs beside a model (classifier heads, int8 ranges,
//! texts, prompts). The same rules as `hostile_inputs.rs`.

mod hostile;
mod tiny;

use std::path::Path;
use std::time::Duration;

use hostile::{budget, check_all, scratch, Case, Expect};
use serde_json::{json, Value};
use tiny::Rng;

const TIMEOUT: Duration = Duration::from_secs(60);

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Output targets: every command that writes a file, to every kind of path

/// What an output path names before the run.
#[derive(Clone, Copy, Debug)]
enum Target {
    NewFile,
    ExistingFile,
    LinkToFile,
    DanglingLink,
    NullDevice,
    FullDevice,
    Fifo,
    Directory,
    MissingFolder,
}

/// A character device `major:minor` made in `dir` when this process may (as root: so a
/// regression can never replace the system's /dev nodes), else the system's own.
fn char_device(dir: &Path, name: &str, dev: (u32, u32), sys: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    let made = std::process::Command::new("mknod").arg(&p).arg("c").arg(dev.0.to_string()).arg(dev.1.to_string()).output();
    if made.is_ok_and(|o| o.status.success()) {
        p
    } else {
        sys.into()
    }
}

fn is_char_device(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_char_device())
}

#[test]
fn every_output_kind_is_written_or_refused_as_the_rule_says() {
    use std::os::unix::fs::symlink;
    let root = scratch("outputs");
    let tiny::Files { gguf, bert, texts, data } = tiny::files(&root, 21);
    // (command, extension its output needs, args before the output path, args after).
    let commands: Vec<(&str, &str, Vec<String>, Vec<String>)> = vec![
        ("embed", "npy", vec!["embed".into(), "-m".into(), s(&bert).into(), s(&texts).into(), "-o".into()], vec![]),
        ("quantize", "gguf", vec!["quantize".into(), s(&gguf).into()], vec!["--to".into(), "q8_0".into()]),
        ("classify train", "json", vec!["classify".into(), "train".into(), "-m".into(), s(&bert).into(), s(&data).into(), "-o".into()], vec![]),
        ("bench", "json", vec!["bench".into(), "-m".into(), s(&gguf).into(), "-p".into(), "8".into(), "-n".into(), "2".into(), "-r".into(), "1".into(), "-o".into()], vec![]),
        ("eval", "json", ["eval", s(&gguf), "--text", s(&texts), "--ctx", "16", "--no-speed", "--format", "none", "-o"].map(String::from).to_vec(), vec![]),
    ];
    let targets = [Target::NewFile, Target::ExistingFile, Target::LinkToFile, Target::DanglingLink, Target::NullDevice, Target::FullDevice, Target::Fifo, Target::Directory, Target::MissingFolder];
    let mut checked = 0;
    for (k, (name, ext, before, after)) in commands.iter().enumerate() {
        for (j, target) in targets.iter().enumerate() {
            let d = root.join(format!("case-{k}-{j}"));
            std::fs::create_dir_all(&d).unwrap();
            let file = d.join(format!("out.{ext}"));
            let (path, expect_ok, what) = match target {
                Target::NewFile => (file.clone(), true, "a new file"),
                Target::ExistingFile => {
                    std::fs::write(&file, "old").unwrap();
                    (file.clone(), true, "an existing file")
                }
                Target::LinkToFile => {
                    std::fs::write(&file, "old").unwrap();
                    let link = d.join(format!("link.{ext}"));
                    symlink(&file, &link).unwrap();
                    (link, true, "a link to a file")
                }
                Target::DanglingLink => {
                    let link = d.join(format!("dangling.{ext}"));
                    symlink(format!("out.{ext}"), &link).unwrap();
                    (link, true, "a dangling link")
                }
                Target::NullDevice => (char_device(&d, "null", (1, 3), "/dev/null"), true, "a null device"),
                Target::FullDevice => (char_device(&d, "full", (1, 7), "/dev/full"), false, "a full device"),
                Target::Fifo => {
                    let f = d.join("fifo");
                    assert!(std::process::Command::new("mkfifo").arg(&f).status().unwrap().success());
                    (f, true, "a FIFO with a reader")
                }
                Target::Directory => (d.clone(), false, "a directory"),
                Target::MissingFolder => (d.join("no/such/folder/out.json"), false, "a path in a missing folder"),
            };
            let reader = matches!(target, Target::Fifo).then(|| {
                let p = path.clone();
                std::thread::spawn(move || std::fs::read(p).unwrap().len())
            });
            let mut args = before.clone();
            args.push(s(&path).into());
            args.extend(after.iter().cloned());
            args.push("-q".into());
            let o = hostile::run(&args, None, TIMEOUT);
            let ctx = format!("{name} -o {what}: exit {:?}\n{}", o.code, o.stderr);
            if expect_ok {
                assert_eq!(o.code, Some(0), "{ctx}");
            } else {
                assert_eq!(o.code, Some(1), "{ctx}");
                assert_eq!(o.stderr.lines().count(), 1, "{ctx}");
            }
            match target {
                Target::NewFile | Target::ExistingFile => assert!(std::fs::read(&file).unwrap().len() > 3, "{ctx}"),
                Target::LinkToFile => {
                    assert!(std::fs::symlink_metadata(&path).unwrap().file_type().is_symlink(), "the link stays a link: {ctx}");
                    assert!(std::fs::read(&file).unwrap().len() > 3, "its target is written: {ctx}");
                }
                Target::DanglingLink => assert!(std::fs::read(&file).unwrap().len() > 3, "its target is created: {ctx}"),
                Target::NullDevice => assert!(is_char_device(&path), "the device stays a device: {ctx}"),
                Target::FullDevice => {
                    assert!(is_char_device(&path), "{ctx}");
                    assert!(o.stderr.contains("No space left"), "{ctx}");
                }
                Target::Fifo => assert!(reader.unwrap().join().unwrap() > 3, "the reader got the output: {ctx}"),
                Target::Directory => assert!(o.stderr.contains("is a directory"), "{ctx}"),
                Target::MissingFolder => assert!(o.stderr.contains("does not exist"), "{ctx}"),
            }
            let leftovers: Vec<_> = std::fs::read_dir(&d).unwrap().filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().contains(".tmp-")).collect();
            assert!(leftovers.is_empty(), "temporary files left: {ctx}");
            checked += 1;
        }
    }
    eprintln!("outputs: {checked} (command, target) pairs checked");
}

/// Writes the seed inputs of the fuzz targets (`fuzz/seeds/<target>/`) from the tiny models:
/// `cargo test -p smelt-cli --test hostile_outputs write_fuzz_seeds -- --ignored`. The seeds are
/// committed; this is how they were made.
#[test]
#[ignore]
fn write_fuzz_seeds() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds");
    let put = |target: &str, name: &str, bytes: &[u8]| {
        std::fs::create_dir_all(seeds.join(target)).unwrap();
        std::fs::write(seeds.join(target).join(name), bytes).unwrap();
    };
    // A Llama GGUF with its tokenizer and template, weights cut to one layer of d = 8 to keep
    // the seed small (the header is what the target reads).
    let mut g = tiny::llama(1);
    for t in &mut g.tensors {
        t.data.truncate(64);
        t.dims = vec![16];
    }
    put("gguf_model", "tiny-llama.gguf", &g.to_bytes());
    put("tokenizer_json", "wordpiece.json", serde_json::to_string_pretty(&tiny::wordpiece_json(&tiny::wordpiece_vocab())).unwrap().as_bytes());
    let mut vocab = serde_json::Map::new();
    for b in 0..=255u8 {
        vocab.insert(tiny::byte_char(b).to_string(), json!(b));
    }
    vocab.insert("he".into(), json!(256));
    vocab.insert("ll".into(), json!(257));
    let bpe = json!({
        "added_tokens": [{"id": 258, "content": "<|im_end|>", "special": true}],
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, {"type": "ByteLevel"}]},
        "model": {"type": "BPE", "vocab": vocab, "merges": ["h e", ["l", "l"]]}
    });
    put("tokenizer_json", "bpe.json", serde_json::to_string(&bpe).unwrap().as_bytes());
    put("config_json", "bert.json", serde_json::to_string_pretty(&tiny::bert_config(68)).unwrap().as_bytes());
    let llama = json!({"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
        "num_key_value_heads": 3, "max_position_embeddings": 8192, "vocab_size": 49152, "rope_theta": 100000.0, "rms_norm_eps": 1e-5,
        "rope_scaling": {"rope_type": "linear", "factor": 2.0}, "tie_word_embeddings": true});
    put("config_json", "llama.json", serde_json::to_string_pretty(&llama).unwrap().as_bytes());
    put("config_json", "pooling.json", serde_json::to_string_pretty(&tiny::bert(1).pooling.unwrap()).unwrap().as_bytes());
    let mut npy = Vec::new();
    smelt_formats::npy::write_npy(&mut npy, &smelt_formats::npy::NpyArray { shape: vec![2, 3], data: smelt_formats::npy::NpyData::F32(vec![0.5, -1.0, 2.0, 3.5, 0.0, -0.25]) }).unwrap();
    put("npy", "f32-2x3.npy", &npy);
    put("chat_template", "chatml.jinja", tiny::CHATML.as_bytes());
    put("chat_template", "namespace-loop.jinja", b"{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{{ m.role | upper }}: {{ m.content | trim }}{% if not loop.last %}\n{% endif %}{% endfor %}{{ ns.n }}{% if add_generation_prompt %}{{ bos_token ~ eos_token }}{% endif %}");
    put("jsonl", "texts.jsonl", b"\"a string\"\n{\"text\": \"with an id\", \"id\": 7}\n{\"text\": \"labelled\", \"label\": \"a\"}\n\n{\"text\": \"x\", \"label\": 3}\r\n");
}

// ---------------------------------------------------------------------------------------------
// Inputs beside the model: classifier heads, calibration ranges, texts

#[test]
fn hostile_heads_ranges_and_texts_are_refused_cleanly() {
    let root = scratch("side");
    let tiny::Files { bert, texts, data, gguf } = tiny::files(&root, 31);
    let head = root.join("head.json");
    let o = hostile::run(&["classify", "train", "-m", s(&bert), s(&data), "-o", s(&head), "-q"].map(String::from), None, TIMEOUT);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let valid: Value = serde_json::from_slice(&std::fs::read(&head).unwrap()).unwrap();
    let mut rng = Rng(0x4ead_0001);
    let mut cases = Vec::new();
    let n = budget(64);
    // Heads.
    for k in 0..n / 4 {
        let mut h = valid.clone();
        let what = match k % 7 {
            0 => {
                h["weights"][0][rng.below(32)] = json!(1e30);
                "a weight of 1e30".to_string()
            }
            1 => {
                h["bias"][1] = json!(-3.4e38);
                "a bias of -3.4e38".into()
            }
            2 => {
                h["bias"].as_array_mut().unwrap().pop();
                "one bias short".into()
            }
            3 => {
                h["weights"][1].as_array_mut().unwrap().push(json!(0.5));
                "a weight row too long".into()
            }
            4 => {
                h["labels"] = json!(["only"]);
                "one label".into()
            }
            5 => {
                h["version"] = json!(99);
                "version 99".into()
            }
            _ => {
                h["format"] = json!("something-else");
                "another format".into()
            }
        };
        let p = root.join(format!("head-{k}.json"));
        std::fs::write(&p, serde_json::to_vec(&h).unwrap()).unwrap();
        cases.push(Case::new(format!("head {what}"), &["classify", "predict", "--head", s(&p), "-m", s(&bert), s(&texts), "-q"], Expect::Fail));
    }
    // Calibration ranges for int8 embeddings.
    let write_npy = |name: &str, shape: Vec<usize>, v: Vec<f32>| {
        let p = root.join(name);
        let mut b = Vec::new();
        smelt_formats::npy::write_npy(&mut b, &smelt_formats::npy::NpyArray { shape, data: smelt_formats::npy::NpyData::F32(v) }).unwrap();
        std::fs::write(&p, b).unwrap();
        p
    };
    for k in 0..n / 4 {
        let mut v: Vec<f32> = (0..64).map(|i| if i < 32 { -1.0 } else { 1.0 }).collect();
        let (shape, what) = match k % 4 {
            0 => {
                v[rng.below(64)] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][rng.below(3)];
                (vec![2, 32], "a non-finite bound")
            }
            1 => {
                let j = rng.below(32);
                v.swap(j, j + 32);
                (vec![2, 32], "a minimum above its maximum")
            }
            2 => (vec![4, 16], "the wrong shape"),
            _ => (vec![64], "one dimension"),
        };
        let p = write_npy(&format!("ranges-{k}.npy"), shape, v);
        let out = root.join("int8.npy");
        cases.push(Case::new(format!("ranges with {what}"), &["embed", "-m", s(&bert), s(&texts), "--precision", "int8", "--ranges", s(&p), "-o", s(&out), "-q"], Expect::Fail).with_output(&out));
    }
    // Texts that are not what they claim to be.
    let bad_texts: [(&str, &[u8]); 5] = [
        ("invalid UTF-8", b"fine\nnot \xff fine\n"),
        ("JSON lines that are not JSON", b"{\"text\": \"a\"}\n{\"text\": \n"),
        ("JSON lines without text", b"{\"id\": 1}\n"),
        ("labelled lines without labels", b"{\"text\": \"a\"}\n"),
        ("nothing but blank lines", b"\n\n \n"),
    ];
    for (k, (what, bytes)) in bad_texts.iter().enumerate() {
        let p = root.join(format!("bad-{k}.jsonl"));
        std::fs::write(&p, bytes).unwrap();
        let args: Vec<&str> = match k {
            3 | 4 => vec!["classify", "train", "-m", s(&bert), s(&p), "-o", "unused.json", "-q"],
            _ => vec!["embed", "-m", s(&bert), s(&p), "-q"],
        };
        cases.push(Case::new(format!("texts: {what}"), &args, Expect::Fail));
        let txt = root.join(format!("bad-{k}.txt"));
        std::fs::write(&txt, bytes).unwrap();
        if k == 0 {
            cases.push(Case::new("eval text: invalid UTF-8", &["eval", s(&gguf), "--text", s(&txt), "--no-speed", "--format", "none", "-q"], Expect::Fail));
            cases.push(Case::new("prompt file: invalid UTF-8", &["run", "-m", s(&gguf), "-f", s(&txt), "-n", "2", "-q"], Expect::Fail));
        }
    }
    cases.push(Case::new("an empty stop string", &["run", "-m", s(&gguf), "-p", "hi", "--stop", "", "-q"], Expect::Fail));
    // Calibration: texts too short or not UTF-8, importance matrices of other models or broken.
    let short = root.join("short.txt");
    std::fs::write(&short, "just a few words").unwrap();
    let latin1 = root.join("latin1.txt");
    std::fs::write(&latin1, b"caf\xe9 ".repeat(2000)).unwrap();
    let im = root.join("im.gguf");
    let long = root.join("long.txt");
    std::fs::write(&long, "the man is playing a guitar and the cat sleeps. ".repeat(200)).unwrap();
    let o = hostile::run(&["imatrix", s(&gguf), "--calib", s(&long), "--ctx", "64", "-o", s(&im), "-q"].map(String::from), None, TIMEOUT);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let qout = root.join("q.gguf");
    for (what, text) in [("shorter than one chunk", &short), ("not UTF-8", &latin1)] {
        cases.push(Case::new(format!("imatrix calibration text {what}"), &["imatrix", s(&gguf), "--calib", s(text), "-o", s(&root.join("x.gguf")), "-q"], Expect::Fail));
        cases.push(Case::new(format!("quantize calibration text {what}"), &["quantize", s(&gguf), s(&qout), "--to", "q8_0", "--calib", s(text), "-q"], Expect::Fail).with_output(&qout));
        cases.push(Case::new(format!("fit calibration text {what}"), &["fit", s(&gguf), "--max-size", "50kB", "--calib", s(text), "-o", s(&qout), "-q"], Expect::Fail).with_output(&qout));
    }
    // Goals no mix can meet: below the smallest candidates, or only types whose blocks do not
    // divide the rows (nothing but "as it is" is left).
    for goal in [["--max-size", "2kB"], ["--max-bpw", "1"]] {
        cases.push(Case::new(format!("fit to {}", goal.join(" ")), &["fit", s(&gguf), goal[0], goal[1], "--calib", s(&long), "--calib-ctx", "64", "-o", s(&qout), "-q"], Expect::Fail).with_output(&qout));
    }
    cases.push(Case::new("fit with only types whose blocks do not divide the rows", &["fit", s(&gguf), "--max-size", "50kB", "--types", "q4_k,q6_k", "--calib", s(&long), "--calib-ctx", "64", "-o", s(&qout), "-q"], Expect::Fail).with_output(&qout));
    // An imatrix made for another model: every name renamed, or one width changed.
    let m = smelt_compress::imatrix::Imatrix::read(&im).unwrap();
    let mut renamed = m.clone();
    renamed.entries = m.entries.iter().map(|(k, v)| (k.replace("blk.", "model.layers."), v.clone())).collect();
    let mut narrow = m.clone();
    if let Some(e) = narrow.entries.values_mut().next() {
        e.sums.truncate(16);
    }
    for (what, bad) in [("of another model", renamed), ("with a wrong width", narrow)] {
        let p = root.join(format!("bad-{}.imatrix.gguf", what.len()));
        std::fs::write(&p, bad.to_gguf_bytes().unwrap()).unwrap();
        cases.push(Case::new(format!("quantize with an imatrix {what}"), &["quantize", s(&gguf), s(&qout), "--to", "q4_0", "--imatrix", s(&p), "-q"], Expect::Fail).with_output(&qout));
        cases.push(Case::new(format!("fit with an imatrix {what}"), &["fit", s(&gguf), "--max-size", "50kB", "--imatrix", s(&p), "--calib", s(&long), "--calib-ctx", "64", "-o", s(&qout), "-q"], Expect::Fail).with_output(&qout));
    }
    for (k, cut) in [10usize, 100, 1000].iter().enumerate() {
        let bytes = std::fs::read(&im).unwrap();
        let p = root.join(format!("cut-{k}.imatrix"));
        std::fs::write(&p, &bytes[..*cut.min(&bytes.len())]).unwrap();
        cases.push(Case::new(format!("quantize with an imatrix cut at {cut}"), &["quantize", s(&gguf), s(&qout), "--to", "q4_0", "--imatrix", s(&p), "-q"], Expect::Fail).with_output(&qout));
    }
    check_all("heads, ranges and texts", &cases, TIMEOUT);
}
