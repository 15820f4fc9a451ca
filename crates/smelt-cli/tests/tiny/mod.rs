//! Tiny models of every format smelt loads, built as specs that tests can break on purpose:
//! a Llama GGUF (byte-level BPE tokenizer, ChatML template), a BERT sentence-transformers
//! directory (safetensors, WordPiece tokenizer.json, side files) and the same BERT as an ONNX
//! export. Each serializer here writes exactly what its spec says, with no checks, so a test can
//! describe an invalid file (overlapping tensors, duplicate names, NaN hyper-parameters) and
//! the serializer writes it as told. Weights are random (seeded): the models compute nonsense,
//! but every loader and every forward pass runs on them in milliseconds.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// xorshift64*: the same fixtures and cases on every run.
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    /// Uniform in [-a, a).
    pub fn sym(&mut self, a: f32) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
    }
    pub fn floats(&mut self, n: usize, a: f32) -> Vec<f32> {
        (0..n).map(|_| self.sym(a)).collect()
    }
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

// ---------------------------------------------------------------------------------------------
// GGUF

/// A metadata value (the kinds the tiny models use).
#[derive(Clone, Debug, PartialEq)]
pub enum Kv {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    I32s(Vec<i32>),
}

/// One tensor: ggml dims (row length first), type id, data, and where it goes in the data
/// section (`None`: after the previous tensor, aligned to 32).
#[derive(Clone, Debug)]
pub struct GTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: u32,
    pub data: Vec<u8>,
    pub offset: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct Gguf {
    pub kv: Vec<(String, Kv)>,
    pub tensors: Vec<GTensor>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl Gguf {
    pub fn set(&mut self, key: &str, v: Kv) {
        match self.kv.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = v,
            None => self.kv.push((key.into(), v)),
        }
    }

    pub fn get(&self, key: &str) -> Option<&Kv> {
        self.kv.iter().find(|(k, _)| k == key).map(|e| &e.1)
    }

    pub fn tensor_mut(&mut self, name: &str) -> &mut GTensor {
        self.tensors.iter_mut().find(|t| t.name == name).unwrap_or_else(|| panic!("no tensor {name}"))
    }

    /// Offsets of every tensor as laid out by [`Gguf::to_bytes`].
    pub fn offsets(&self) -> Vec<u64> {
        let mut at = 0u64;
        self.tensors
            .iter()
            .map(|t| {
                let o = t.offset.unwrap_or(at);
                at = (o + t.data.len() as u64).div_ceil(32) * 32;
                o
            })
            .collect()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            put_str(&mut out, k);
            match v {
                Kv::U32(x) => {
                    out.extend_from_slice(&4u32.to_le_bytes());
                    out.extend_from_slice(&x.to_le_bytes());
                }
                Kv::F32(x) => {
                    out.extend_from_slice(&6u32.to_le_bytes());
                    out.extend_from_slice(&x.to_le_bytes());
                }
                Kv::Bool(x) => {
                    out.extend_from_slice(&7u32.to_le_bytes());
                    out.push(*x as u8);
                }
                Kv::Str(s) => {
                    out.extend_from_slice(&8u32.to_le_bytes());
                    put_str(&mut out, s);
                }
                Kv::Strs(a) => {
                    out.extend_from_slice(&9u32.to_le_bytes());
                    out.extend_from_slice(&8u32.to_le_bytes());
                    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
                    for s in a {
                        put_str(&mut out, s);
                    }
                }
                Kv::I32s(a) => {
                    out.extend_from_slice(&9u32.to_le_bytes());
                    out.extend_from_slice(&5u32.to_le_bytes());
                    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
                    for x in a {
                        out.extend_from_slice(&x.to_le_bytes());
                    }
                }
            }
        }
        let offsets = self.offsets();
        for (t, off) in self.tensors.iter().zip(&offsets) {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.to_le_bytes());
            out.extend_from_slice(&off.to_le_bytes());
        }
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
        let base = out.len();
        for (t, off) in self.tensors.iter().zip(&offsets) {
            let at = base + *off as usize;
            if out.len() < at + t.data.len() {
                out.resize(at + t.data.len(), 0);
            }
            out[at..at + t.data.len()].copy_from_slice(&t.data);
        }
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
        out
    }
}

/// GPT-2's byte-level alphabet: the printable bytes stand for themselves, the rest are shifted
/// to 256 and up.
pub fn byte_char(b: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
    if printable(b) {
        return b as char;
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).unwrap_or('?')
}

pub const LLAMA_D: usize = 32;
pub const LLAMA_FFN: usize = 64;
pub const LLAMA_LAYERS: usize = 2;
pub const LLAMA_HEADS: usize = 4;
pub const LLAMA_KV: usize = 2;
pub const LLAMA_CTX: u32 = 256;
pub const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// A 2-layer Llama (d = 32, 4 query heads sharing 2 key/value heads, FFN 64) with a byte-level
/// BPE vocabulary of 256 bytes, 3 merges and 3 control tokens; F32 weights, norms of ones.
pub fn llama(seed: u64) -> Gguf {
    let mut rng = Rng(seed | 1);
    let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
    let merges = ["h e", "l l", "he ll"];
    for m in merges {
        tokens.push(m.replace(' ', ""));
    }
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    tokens.extend(specials.iter().map(|s| s.to_string()));
    let vocab = tokens.len();
    let mut types = vec![1i32; vocab];
    for t in &mut types[vocab - specials.len()..] {
        *t = 3;
    }
    let (d, ffn, hd) = (LLAMA_D as u64, LLAMA_FFN as u64, (LLAMA_D / LLAMA_HEADS) as u64);
    let kvd = hd * LLAMA_KV as u64;
    let kv = vec![
        ("general.architecture".into(), Kv::Str("llama".into())),
        ("general.name".into(), Kv::Str("tiny".into())),
        ("llama.context_length".into(), Kv::U32(LLAMA_CTX)),
        ("llama.embedding_length".into(), Kv::U32(d as u32)),
        ("llama.block_count".into(), Kv::U32(LLAMA_LAYERS as u32)),
        ("llama.feed_forward_length".into(), Kv::U32(ffn as u32)),
        ("llama.attention.head_count".into(), Kv::U32(LLAMA_HEADS as u32)),
        ("llama.attention.head_count_kv".into(), Kv::U32(LLAMA_KV as u32)),
        ("llama.rope.freq_base".into(), Kv::F32(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon".into(), Kv::F32(1e-5)),
        ("tokenizer.ggml.model".into(), Kv::Str("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Kv::Str("smollm".into())),
        ("tokenizer.ggml.tokens".into(), Kv::Strs(tokens)),
        ("tokenizer.ggml.token_type".into(), Kv::I32s(types)),
        ("tokenizer.ggml.merges".into(), Kv::Strs(merges.iter().map(|s| s.to_string()).collect())),
        ("tokenizer.ggml.bos_token_id".into(), Kv::U32(vocab as u32 - 3)),
        ("tokenizer.ggml.eos_token_id".into(), Kv::U32(vocab as u32 - 1)),
        ("tokenizer.ggml.add_bos_token".into(), Kv::Bool(false)),
        ("tokenizer.chat_template".into(), Kv::Str(CHATML.into())),
    ];
    let mut tensors = Vec::new();
    let mut mat = |name: String, cols: u64, rows: u64, rng: &mut Rng| {
        let data = f32_bytes(&rng.floats((cols * rows) as usize, 0.3));
        tensors.push(GTensor { name, dims: vec![cols, rows], ty: 0, data, offset: None });
    };
    mat("token_embd.weight".into(), d, vocab as u64, &mut rng);
    let ones = |n: u64| f32_bytes(&vec![1.0; n as usize]);
    let mut norms = Vec::new();
    for l in 0..LLAMA_LAYERS {
        mat(format!("blk.{l}.attn_q.weight"), d, d, &mut rng);
        mat(format!("blk.{l}.attn_k.weight"), d, kvd, &mut rng);
        mat(format!("blk.{l}.attn_v.weight"), d, kvd, &mut rng);
        mat(format!("blk.{l}.attn_output.weight"), d, d, &mut rng);
        mat(format!("blk.{l}.ffn_gate.weight"), d, ffn, &mut rng);
        mat(format!("blk.{l}.ffn_up.weight"), d, ffn, &mut rng);
        mat(format!("blk.{l}.ffn_down.weight"), ffn, d, &mut rng);
        norms.push(format!("blk.{l}.attn_norm.weight"));
        norms.push(format!("blk.{l}.ffn_norm.weight"));
    }
    norms.push("output_norm.weight".into());
    for n in norms {
        tensors.push(GTensor { name: n, dims: vec![d], ty: 0, data: ones(d), offset: None });
    }
    Gguf { kv, tensors }
}

// ---------------------------------------------------------------------------------------------
// safetensors

/// One safetensors entry: name, dtype, shape, data (always written in order; `range` replaces
/// the offsets the header states).
#[derive(Clone, Debug)]
pub struct STensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
    pub range: Option<(usize, usize)>,
}

/// A safetensors file exactly as the entries say (duplicates and overlaps included).
pub fn safetensors_bytes(ts: &[STensor]) -> Vec<u8> {
    let mut at = 0;
    let mut entries = Vec::new();
    let mut data = Vec::new();
    for t in ts {
        let (a, b) = t.range.unwrap_or((at, at + t.data.len()));
        entries.push(format!("{}:{{\"dtype\":\"{}\",\"shape\":{:?},\"data_offsets\":[{a},{b}]}}", Value::String(t.name.clone()), t.dtype, t.shape));
        data.extend_from_slice(&t.data);
        at += t.data.len();
    }
    let mut header = format!("{{{}}}", entries.join(",")).into_bytes();
    while (8 + header.len()) % 8 != 0 {
        header.push(b' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&data);
    out
}

pub const BERT_D: usize = 32;
pub const BERT_FFN: usize = 64;
pub const BERT_LAYERS: usize = 2;
pub const BERT_HEADS: usize = 4;
pub const BERT_POS: usize = 64;

/// A sentence-transformers directory: every file as a value, so tests can break any of them.
#[derive(Clone, Debug)]
pub struct BertDir {
    pub config: Value,
    pub tensors: Vec<STensor>,
    pub tokenizer: Value,
    pub modules: Option<Value>,
    pub st_config: Option<Value>,
    pub pooling: Option<Value>,
}

/// The WordPiece vocabulary of the tiny encoders: specials, letters, a few words and suffixes.
pub fn wordpiece_vocab() -> Vec<String> {
    let mut v: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"].iter().map(|s| s.to_string()).collect();
    v.extend(('a'..='z').map(|c| c.to_string()));
    v.extend(('a'..='z').map(|c| format!("##{c}")));
    v.extend(["the", "man", "guitar", "play", "##ing", "is", ".", ",", "!", "?"].iter().map(|s| s.to_string()));
    v
}

pub fn wordpiece_json(vocab: &[String]) -> Value {
    let map: serde_json::Map<String, Value> = vocab.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100, "vocab": map}
    })
}

/// The HF-named tensors of a tiny BERT, as (name, shape, values).
pub fn bert_weights(seed: u64, vocab: usize) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut rng = Rng(seed | 1);
    let (d, ffn) = (BERT_D, BERT_FFN);
    let mut out = Vec::new();
    let mut t = |name: &str, shape: Vec<usize>, rng: &mut Rng, value: Option<f32>| {
        let n = shape.iter().product();
        let v = match value {
            Some(c) => vec![c; n],
            None => rng.floats(n, 0.2),
        };
        out.push((name.to_string(), shape, v));
    };
    t("embeddings.word_embeddings.weight", vec![vocab, d], &mut rng, None);
    t("embeddings.position_embeddings.weight", vec![BERT_POS, d], &mut rng, None);
    t("embeddings.token_type_embeddings.weight", vec![2, d], &mut rng, None);
    t("embeddings.LayerNorm.weight", vec![d], &mut rng, Some(1.0));
    t("embeddings.LayerNorm.bias", vec![d], &mut rng, Some(0.0));
    for l in 0..BERT_LAYERS {
        let p = |s: &str| format!("encoder.layer.{l}.{s}");
        for m in ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"] {
            t(&p(&format!("{m}.weight")), vec![d, d], &mut rng, None);
            t(&p(&format!("{m}.bias")), vec![d], &mut rng, None);
        }
        t(&p("attention.output.LayerNorm.weight"), vec![d], &mut rng, Some(1.0));
        t(&p("attention.output.LayerNorm.bias"), vec![d], &mut rng, Some(0.0));
        t(&p("intermediate.dense.weight"), vec![ffn, d], &mut rng, None);
        t(&p("intermediate.dense.bias"), vec![ffn], &mut rng, None);
        t(&p("output.dense.weight"), vec![d, ffn], &mut rng, None);
        t(&p("output.dense.bias"), vec![d], &mut rng, None);
        t(&p("output.LayerNorm.weight"), vec![d], &mut rng, Some(1.0));
        t(&p("output.LayerNorm.bias"), vec![d], &mut rng, Some(0.0));
    }
    out
}

pub fn bert_config(vocab: usize) -> Value {
    json!({
        "model_type": "bert", "architectures": ["BertModel"], "hidden_size": BERT_D, "num_hidden_layers": BERT_LAYERS,
        "num_attention_heads": BERT_HEADS, "intermediate_size": BERT_FFN, "max_position_embeddings": BERT_POS,
        "vocab_size": vocab, "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu",
        "pad_token_id": 0, "position_embedding_type": "absolute"
    })
}

/// A 2-layer BERT sentence encoder (d = 32, 4 heads, FFN 64, 64 positions), mean pooling and
/// normalization, as sentence-transformers saves it.
pub fn bert(seed: u64) -> BertDir {
    let vocab = wordpiece_vocab();
    let tensors = bert_weights(seed, vocab.len())
        .into_iter()
        .map(|(name, shape, v)| STensor { name, dtype: "F32".into(), shape, data: f32_bytes(&v), range: None })
        .collect();
    BertDir {
        config: bert_config(vocab.len()),
        tensors,
        tokenizer: wordpiece_json(&vocab),
        modules: Some(json!([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        ])),
        st_config: Some(json!({"max_seq_length": 48, "do_lower_case": false})),
        pooling: Some(json!({"word_embedding_dimension": BERT_D, "pooling_mode_cls_token": false, "pooling_mode_mean_tokens": true, "pooling_mode_max_tokens": false, "pooling_mode_mean_sqrt_len_tokens": false})),
    }
}

fn write_json(path: &Path, v: &Value) {
    std::fs::write(path, serde_json::to_vec_pretty(v).unwrap()).unwrap();
}

impl BertDir {
    /// Writes the directory (created anew).
    pub fn write(&self, dir: &Path) -> PathBuf {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
        write_json(&dir.join("config.json"), &self.config);
        std::fs::write(dir.join("model.safetensors"), safetensors_bytes(&self.tensors)).unwrap();
        write_json(&dir.join("tokenizer.json"), &self.tokenizer);
        if let Some(m) = &self.modules {
            write_json(&dir.join("modules.json"), m);
        }
        if let Some(s) = &self.st_config {
            write_json(&dir.join("sentence_bert_config.json"), s);
        }
        if let Some(p) = &self.pooling {
            write_json(&dir.join("1_Pooling/config.json"), p);
        }
        dir.to_path_buf()
    }

    pub fn tensor_mut(&mut self, name: &str) -> &mut STensor {
        self.tensors.iter_mut().find(|t| t.name == name).unwrap_or_else(|| panic!("no tensor {name}"))
    }
}

// ---------------------------------------------------------------------------------------------
// ONNX (protocol buffers, the few fields smelt reads)

fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn field(num: u64, payload: &[u8], out: &mut Vec<u8>) {
    varint(num << 3 | 2, out);
    varint(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

/// A FLOAT TensorProto: dims (1), data_type (2), name (8), raw_data (9).
pub fn onnx_tensor(name: &str, dims: &[i64], values: &[f32]) -> Vec<u8> {
    let mut t = Vec::new();
    for &d in dims {
        varint(1 << 3, &mut t);
        varint(d as u64, &mut t);
    }
    varint(2 << 3, &mut t);
    varint(1, &mut t);
    field(8, name.as_bytes(), &mut t);
    field(9, &f32_bytes(values), &mut t);
    t
}

/// A NodeProto: inputs (1), outputs (2), name (3), op_type (4), and a float attribute (5).
pub fn onnx_node(name: &str, op: &str, inputs: &[&str], outputs: &[&str], float_attr: Option<(&str, f32)>) -> Vec<u8> {
    let mut n = Vec::new();
    for i in inputs {
        field(1, i.as_bytes(), &mut n);
    }
    for o in outputs {
        field(2, o.as_bytes(), &mut n);
    }
    field(3, name.as_bytes(), &mut n);
    field(4, op.as_bytes(), &mut n);
    if let Some((k, v)) = float_attr {
        let mut a = Vec::new();
        field(1, k.as_bytes(), &mut a);
        varint(2 << 3 | 5, &mut a);
        a.extend_from_slice(&v.to_le_bytes());
        field(5, &a, &mut n);
    }
    n
}

/// A ModelProto whose graph (7) holds `nodes` (field 1) and `initializers` (field 5).
pub fn onnx_model(nodes: &[Vec<u8>], initializers: &[Vec<u8>]) -> Vec<u8> {
    let mut g = Vec::new();
    for n in nodes {
        field(1, n, &mut g);
    }
    for t in initializers {
        field(5, t, &mut g);
    }
    let mut m = Vec::new();
    varint(1 << 3, &mut m); // ir_version
    varint(8, &mut m);
    field(7, &g, &mut m);
    m
}

/// ONNX initializers: (name, dims, values).
pub type Initializers = Vec<(String, Vec<i64>, Vec<f32>)>;

/// The tiny BERT as an ONNX export with HF-named initializers (prefix `model.0.auto_model.`), an
/// attention scale node per layer and one LayerNormalization node; plus its tokenizer.json.
pub fn bert_onnx(seed: u64) -> (Initializers, Value) {
    let vocab = wordpiece_vocab();
    let inits = bert_weights(seed, vocab.len())
        .into_iter()
        .map(|(name, shape, v)| (format!("model.0.auto_model.{name}"), shape.iter().map(|&d| d as i64).collect(), v))
        .collect();
    (inits, wordpiece_json(&vocab))
}

/// Serializes an ONNX BERT from its initializers (the graph nodes are fixed).
pub fn bert_onnx_bytes(inits: &[(String, Vec<i64>, Vec<f32>)]) -> Vec<u8> {
    let scale = ((BERT_D / BERT_HEADS) as f32).sqrt();
    let mut nodes = Vec::new();
    nodes.push(onnx_node("scale_const", "Constant", &[], &["scale"], None));
    for l in 0..BERT_LAYERS {
        let out = format!("/encoder/layer.{l}/attention/self/Div_output_0");
        nodes.push(onnx_node(&format!("/encoder/layer.{l}/attention/self/Div"), "Div", &["scores", "attn_scale"], &[&out], None));
    }
    nodes.push(onnx_node("/embeddings/LayerNorm/LayerNormalization", "LayerNormalization", &["x", "w", "b"], &["y"], Some(("epsilon", 1e-12))));
    let mut ts: Vec<Vec<u8>> = inits.iter().map(|(n, d, v)| onnx_tensor(n, d, v)).collect();
    ts.push(onnx_tensor("attn_scale", &[], &[scale]));
    onnx_model(&nodes, &ts)
}

/// Writes the ONNX export and its tokenizer.json into `dir`; returns the .onnx path.
pub fn write_onnx(dir: &Path, inits: &[(String, Vec<i64>, Vec<f32>)], tokenizer: &Value) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join("model.onnx");
    std::fs::write(&p, bert_onnx_bytes(inits)).unwrap();
    write_json(&dir.join("tokenizer.json"), tokenizer);
    p
}

// ---------------------------------------------------------------------------------------------
// A folder of ready inputs

/// Files for running commands: a tiny GGUF, a tiny encoder directory, texts and labelled data.
pub struct Files {
    pub gguf: PathBuf,
    pub bert: PathBuf,
    /// Short sentences, one per line.
    pub texts: PathBuf,
    /// Four labelled JSON lines, two labels.
    pub data: PathBuf,
}

pub fn files(dir: &Path, seed: u64) -> Files {
    let gguf = dir.join("tiny.gguf");
    std::fs::write(&gguf, llama(seed).to_bytes()).unwrap();
    let bert = bert(seed + 1).write(&dir.join("bert"));
    let texts = dir.join("texts.txt");
    std::fs::write(&texts, "the man is playing a guitar.\na man plays\nthe guitar\n".repeat(6)).unwrap();
    let data = dir.join("data.jsonl");
    std::fs::write(&data, "{\"text\":\"the man plays\",\"label\":\"a\"}\n{\"text\":\"a guitar\",\"label\":\"b\"}\n{\"text\":\"the man\",\"label\":\"a\"}\n{\"text\":\"guitar is\",\"label\":\"b\"}\n").unwrap();
    Files { gguf, bert, texts, data }
}
