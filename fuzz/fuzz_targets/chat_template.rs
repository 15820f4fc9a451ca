//! Chat templates on arbitrary text: rendered within the fuel limit, or an error; never a
//! panic and never a loop without end.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smelt_models::{ChatTemplate, Message, Tokenizer};
use smelt_models::tokenizer::{PreTokenizer, TokenKind};

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else { return };
    let tokens: Vec<String> = (0..=255u8).map(|b| smelt_models::tokenizer::bytelevel::byte_to_char()[b as usize].to_string()).collect();
    let kinds = vec![TokenKind::Normal; tokens.len()];
    let Ok(tok) = Tokenizer::build(tokens, kinds, &[], PreTokenizer::Gpt2, Some(1), Some(2), false) else { return };
    let t = ChatTemplate::new(Some(src), &tok);
    let _ = t.render(&[Message::new("system", "be brief"), Message::new("user", "hi"), Message::new("assistant", "hello")], true);
});
