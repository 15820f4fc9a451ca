//! A GGUF file as a model: header, then the Llama config, the tokenizer and the chat template
//! read from its metadata, then a fixed text through the tokenizer. Each step returns Ok or a
//! typed error, never panics (the hyper-parameter checks and the tokenizer's tables are what
//! this reaches that the `gguf` target does not).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smelt_models::{ChatTemplate, LlamaConfig, Message, Tokenizer};

fuzz_target!(|data: &[u8]| {
    let Ok(h) = smelt_formats::gguf::parse(data) else { return };
    let _ = LlamaConfig::from_gguf(&h);
    let Ok(tok) = Tokenizer::from_gguf(&h) else { return };
    let ids = tok.encode("Hello, world! 123 <|im_end|> ünïcödé", true);
    for id in ids.iter().copied() {
        let _ = tok.token_text(id);
    }
    let _ = ChatTemplate::from_gguf(&h, &tok).render(&[Message::new("user", "hi")], true);
});
