//! Chat templates: the Jinja template a model file carries (`tokenizer.chat_template`), rendered
//! with minijinja over a list of messages. Templates come from files, so rendering runs with a
//! fuel limit (no template can loop forever) and errors are reported, not panicked on. Models
//! without a template get ChatML.

use serde::Serialize;
use smelt_formats::gguf::GgufHeader;

use crate::{ModelError, Tokenizer};

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message { role: role.into(), content: content.into() }
    }
}

/// ChatML, the fallback for models that carry no template.
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Instructions a template may spend (minijinja fuel): ample for real templates over long
/// conversations, a hard stop for hostile ones.
const FUEL: u64 = 50_000_000;

/// A model's chat template.
#[derive(Clone, Debug)]
pub struct ChatTemplate {
    pub source: String,
    /// Whether the model file carried it (false: the ChatML fallback).
    pub from_model: bool,
    bos: String,
    eos: String,
}

impl ChatTemplate {
    /// The template of a GGUF file, or ChatML.
    pub fn from_gguf(h: &GgufHeader, tok: &Tokenizer) -> ChatTemplate {
        Self::new(h.get("tokenizer.chat_template").and_then(|v| v.as_str()), tok)
    }

    /// `source`, or ChatML when there is none.
    pub fn new(source: Option<&str>, tok: &Tokenizer) -> ChatTemplate {
        let text = |id: Option<u32>| id.and_then(|i| tok.token_text(i)).unwrap_or("").to_string();
        match source {
            Some(src) if !src.trim().is_empty() => ChatTemplate { source: src.into(), from_model: true, bos: text(tok.bos), eos: text(tok.eos) },
            _ => ChatTemplate { source: CHATML.into(), from_model: false, bos: text(tok.bos), eos: text(tok.eos) },
        }
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the assistant's
    /// answer begins.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, ModelError> {
        let mut env = minijinja::Environment::new();
        env.set_fuel(Some(FUEL));
        env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template("chat", &self.source).map_err(|e| ModelError::Template(e.to_string()))?;
        let t = env.get_template("chat").map_err(|e| ModelError::Template(e.to_string()))?;
        t.render(minijinja::context! {
            messages => minijinja::Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos.as_str(),
            eos_token => self.eos.as_str(),
        })
        .map_err(|e| ModelError::Template(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(src: &str) -> ChatTemplate {
        ChatTemplate { source: src.into(), from_model: true, bos: "<s>".into(), eos: "</s>".into() }
    }

    #[test]
    fn chatml_renders_turns_and_the_generation_prompt() {
        let t = template(CHATML);
        let s = t.render(&[Message::new("user", "hi"), Message::new("assistant", "hello")], true).unwrap();
        assert_eq!(s, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn hostile_templates_fail_cleanly() {
        let looping = template("{% for i in range(100000000) %}{{ i }}{% endfor %}");
        assert!(matches!(looping.render(&[], false), Err(ModelError::Template(_))));
        let raising = template("{{ raise_exception('no system role') }}");
        assert!(raising.render(&[], false).unwrap_err().to_string().contains("no system role"));
        assert!(template("{% if %}").render(&[], false).is_err());
    }
}
