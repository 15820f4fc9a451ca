//! Broken encoder directories get clear errors, never a panic: all-MiniLM-L6-v2 with a tensor
//! missing, a tensor of the wrong shape, an absurd config, a corrupt tokenizer.json.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::SafeTensors;
use smelt_models::Encoder;

/// A copy of the model directory whose safetensors file is rebuilt by `edit` (name, shape).
type Edit<'a> = &'a dyn Fn(&str, Vec<usize>) -> Option<Vec<usize>>;

fn variant(tag: &str, edit: Edit) -> PathBuf {
    let src = smelt_assets::ensure("all-minilm-l6-v2").unwrap();
    let dir = std::env::temp_dir().join(format!("smelt-bad-encoder-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "tokenizer.json", "modules.json", "sentence_bert_config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut views = Vec::new();
    for (name, t) in st.tensors() {
        if let Some(shape) = edit(&name, t.shape().to_vec()) {
            let elem = t.data().len() / t.shape().iter().product::<usize>().max(1);
            let n: usize = shape.iter().product::<usize>() * elem;
            views.push((name, TensorView::new(t.dtype(), shape, &t.data()[..n]).unwrap()));
        }
    }
    std::fs::write(dir.join("model.safetensors"), safetensors::serialize(views, None::<HashMap<String, String>>).unwrap()).unwrap();
    dir
}

fn error(dir: &Path) -> String {
    match Encoder::load(dir, None) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_and_misshapen_tensors_are_named() {
    let gone = "encoder.layer.3.attention.self.key.weight";
    let e = error(&variant("missing", &|n, s| (n != gone).then_some(s)));
    assert!(e.contains(gone), "{e}");

    let bent = "encoder.layer.2.intermediate.dense.weight";
    let e = error(&variant("shape", &|n, s| Some(if n == bent { vec![1535, 384] } else { s })));
    assert!(e.contains(bent) && e.contains("1535"), "{e}");

    let short = "encoder.layer.5.output.LayerNorm.bias";
    let e = error(&variant("short", &|n, s| Some(if n == short { vec![100] } else { s })));
    assert!(e.contains(short), "{e}");
}

#[test]
fn absurd_configs_and_broken_tokenizers_are_refused() {
    let dir = variant("config", &|_, s| Some(s));
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(dir.join("config.json"), cfg.replace("\"hidden_size\": 384", "\"hidden_size\": 99999999")).unwrap();
    let e = error(&dir);
    assert!(e.contains("hidden_size"), "{e}");
    std::fs::write(dir.join("config.json"), cfg.replace("\"num_attention_heads\": 12", "\"num_attention_heads\": 7")).unwrap();
    let e = error(&dir);
    assert!(e.contains("heads"), "{e}");
    std::fs::write(dir.join("config.json"), &cfg).unwrap();
    std::fs::write(dir.join("tokenizer.json"), b"{\"model\": {\"type\": \"WordPiece\"").unwrap();
    let e = error(&dir);
    assert!(e.to_lowercase().contains("tokenizer"), "{e}");
}
