//! `smelt chat`: a conversation, one user message per line of stdin (a terminal or a pipe).
//! The KV cache is kept across turns: each turn only processes the new tokens.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::Result;
use smelt_models::{generate, Message, ModelError, StopReason};

use super::lm;
use crate::cli::{ChatArgs, Global};

pub fn run(args: &ChatArgs, global: &Global) -> Result<i32> {
    let lm = lm::load(&args.lm, global)?;
    let cancel = lm::cancel_flag();
    let ctx = lm::context(&args.lm, &lm.model, global.quiet);
    let mut sess = lm.model.session(ctx);
    let (cfg, _) = lm::checked_config(&args.lm)?;
    let interactive = std::io::stdin().is_terminal();
    if interactive && !global.quiet {
        eprintln!("{} ({} tokens of context). /reset starts over, /exit quits.", lm.name, ctx);
        if !lm.template.from_model {
            eprintln!("(the model has no chat template; using ChatML)");
        }
    }
    let mut messages: Vec<Message> = args.system.iter().map(|s| Message::new("system", s)).collect();
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut line = Vec::new();
    let mut out = std::io::stdout();
    loop {
        if interactive {
            eprint!("> ");
        }
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(0);
        }
        let Ok(text) = std::str::from_utf8(&line) else {
            eprintln!("error: that line is not valid UTF-8; it was skipped");
            continue;
        };
        let text = text.trim_end_matches(['\n', '\r']);
        match text.trim() {
            "" => continue,
            "/exit" | "/quit" => return Ok(0),
            "/reset" => {
                messages.retain(|m| m.role == "system");
                sess.truncate(0);
                if interactive {
                    eprintln!("(conversation cleared)");
                }
                continue;
            }
            _ => {}
        }
        messages.push(Message::new("user", text));
        let prompt = lm.template.render(&messages, true)?;
        let ids = lm.tok.encode(&prompt, true);
        let result = {
            let _g = lm::Generating::start();
            generate(&lm.model, &lm.tok, &lm.pool, &mut sess, &ids, &cfg, cancel, &mut |piece| {
                let _ = out.write_all(piece.as_bytes()).and_then(|()| out.flush());
            })
        };
        match result {
            Ok(g) => {
                writeln!(out)?;
                match g.stop_reason {
                    StopReason::Cancelled => eprintln!("[interrupted]"),
                    StopReason::ContextFull => eprintln!("[context full: {ctx} tokens; /reset to start over, or a larger --ctx-size]"),
                    StopReason::Length => eprintln!("[stopped at {} tokens; raise -n for longer answers]", g.tokens.len()),
                    _ => {}
                }
                messages.push(Message::new("assistant", &g.text));
            }
            Err(ModelError::PromptTooLong { tokens, context }) => {
                messages.pop();
                eprintln!("error: the conversation needs {tokens} tokens but the context holds {context}; /reset to start over, or run with a larger --ctx-size");
            }
            Err(e) => return Err(e.into()),
        }
    }
}
