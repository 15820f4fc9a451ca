//! tokenizer.json on arbitrary bytes, read as WordPiece (encoders) and as byte-level BPE
//! (decoders); an accepted tokenizer encodes a fixed text. Ok or a typed error, never a panic,
//! never a table larger than the input justifies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smelt_models::tokenizer::wordpiece::WordPiece;
use smelt_models::Tokenizer;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    if let Ok(wp) = WordPiece::from_json(&v) {
        let _ = wp.encode("A man is playing a guitar. ÜBER naïve 東京 ##x [CLS]", 64);
    }
    if let Ok(bpe) = Tokenizer::from_hf_value(&v, &serde_json::Value::Null) {
        let _ = bpe.encode("Hello, world! 123 <|im_end|>", true);
    }
});
