//! The one validated settings layer of the command line: raw arguments become checked values
//! before any command runs.
//!
//! Every numeric option's range is a row of [`SETTINGS`]; the ranges of library settings
//! (sampling, encoder lengths) come from the library, so a value read from a model's files or,
//! later, from a server request meets the same check. [`command`] applies the table to the clap
//! command tree:
//! - each numeric option gets a parser that refuses NaN, infinities, fractions where a whole
//!   number is due and values out of range, with a message that gives the range (exit code 2);
//! - its help text ends with the range;
//! - a value that starts with `-` is taken as the option's value (`--temp -1` is refused for its
//!   range, not mistaken for an unknown flag); every other option takes negative numbers too.
//!
//! Limits that depend on the model (a context no longer than it was trained for, windows no
//! longer than the encoder's limit) are checked when the model is loaded.

use clap::builder::ValueParser;
use clap::{Arg, Command};
use smelt_models::embed::MAX_LENGTH;
use smelt_models::settings::{Bound, SettingError};
use smelt_models::SamplerConfig;

/// The Rust type an option parses into (the derive's field type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    Usize,
    U64,
    F32,
    F64,
}

/// One numeric option: its clap id, the subcommands it has this range in (empty: all), its
/// type and its range.
#[derive(Clone, Copy, Debug)]
pub struct Setting {
    pub id: &'static str,
    pub commands: &'static [&'static str],
    pub ty: Ty,
    pub bound: Bound,
}

const fn int(id: &'static str, commands: &'static [&'static str], min: u64, max: u64) -> Setting {
    Setting { id, commands, ty: Ty::Usize, bound: Bound::int(id, min, max) }
}

const fn of(id: &'static str, ty: Ty, bound: Bound) -> Setting {
    Setting { id, commands: &[], ty, bound }
}

/// Most threads a pool may be asked for (the CPUs this process may use cap it further).
pub const MAX_THREADS: u64 = 4096;
/// Longest context or prompt any option may ask for (models' own limits apply on top).
const MAX_TOKENS: u64 = 1 << 20;
const MEASURE: &[&str] = &["eval", "compare", "shrink"];
const ROUTER: &[&str] = &["serve", "label", "eval"];

/// Every numeric option of every command, with its range.
pub const SETTINGS: &[Setting] = &[
    int("threads", &[], 1, MAX_THREADS),
    // Generation (run, chat).
    int("max_tokens", &[], 0, MAX_TOKENS),
    of("temperature", Ty::F32, SamplerConfig::TEMPERATURE),
    int("top_k", &[], 0, MAX_TOKENS),
    of("top_p", Ty::F32, SamplerConfig::TOP_P),
    of("min_p", Ty::F32, SamplerConfig::MIN_P),
    of("repeat_penalty", Ty::F32, SamplerConfig::REPEAT_PENALTY),
    int("repeat_last_n", &[], 0, MAX_TOKENS),
    Setting { id: "seed", commands: &[], ty: Ty::U64, bound: Bound::int("seed", 0, u64::MAX) },
    int("ctx_size", &[], 16, MAX_TOKENS),
    // Serving.
    int("port", &["serve"], 0, 65535),
    int("parallel", &["serve"], 1, 256),
    int("queue", &["serve"], 0, 1 << 16),
    of("timeout", Ty::F64, Bound::positive("timeout", 1e7)),
    int("max_body", &["serve"], 1024, 1 << 30),
    // The router's signals (serve, and route label|eval which measure them).
    Setting { id: "complexity_threshold", commands: ROUTER, ty: Ty::F32, bound: Bound::float("complexity_threshold", 0.0, 1.0) },
    int("confidence_tokens", ROUTER, 0, 256),
    Setting { id: "confidence_logprob", commands: ROUTER, ty: Ty::F32, bound: Bound::float("confidence_logprob", -100.0, 0.0) },
    Setting { id: "confidence_top1", commands: ROUTER, ty: Ty::F32, bound: Bound::float("confidence_top1", 0.0, 1.0) },
    int("concurrency", &["label", "eval"], 1, 1024),
    int("drift_window", &["serve"], 0, 1 << 20),
    int("window", &["monitor"], 1, 1 << 30),
    Setting { id: "low_confidence", commands: &["monitor"], ty: Ty::F32, bound: Bound::float("low_confidence", -100.0, 0.0) },
    Setting { id: "drift_alert", commands: &["monitor"], ty: Ty::F64, bound: Bound::float("drift_alert", 0.0, 2.0) },
    Setting { id: "target", commands: &["eval"], ty: Ty::F64, bound: Bound::float("target", 0.0, 1.0) },
    Setting { id: "remote_rpm", commands: &["serve"], ty: Ty::U64, bound: Bound::int("remote_rpm", 1, 1 << 40) },
    Setting { id: "remote_tokens_per_day", commands: &["serve"], ty: Ty::U64, bound: Bound::int("remote_tokens_per_day", 1, 1 << 60) },
    of("remote_timeout", Ty::F64, Bound::positive("remote_timeout", 1e6)),
    // Measuring (eval, compare, shrink).
    int("ctx", MEASURE, 16, MAX_TOKENS),
    int("chunks", MEASURE, 1, 1 << 24),
    // Calibrated quantization.
    int("calib_chunks", &[], 1, 1 << 24),
    int("calib_ctx", &[], 16, MAX_TOKENS),
    of("damp", Ty::F64, Bound::positive("damp", 1.0)),
    int("awq_grid", &["quantize", "fit"], 2, 1000),
    // Mixed precision (fit).
    of("max_bpw", Ty::F64, Bound::positive("max_bpw", 64.0)),
    of("min_quality", Ty::F64, Bound::float("min_quality", 0.0, 100.0)),
    int("probe_chunks", &["fit"], 1, 1 << 16),
    // Pruning.
    of("sparsity", Ty::F64, Bound::float("sparsity", 0.0, 0.999)),
    int("layers", &["prune", "distill"], 1, 1 << 16),
    of("ffn", Ty::F64, Bound::float("ffn", 0.0, 0.999)),
    of("heads", Ty::F64, Bound::float("heads", 0.0, 0.999)),
    of("owl_threshold", Ty::F64, Bound::positive("owl_threshold", 1e6)),
    of("owl_lambda", Ty::F64, Bound::float("owl_lambda", 0.0, 0.5)),
    int("front_checks", &["fit"], 0, 1 << 10),
    // Calibration (imatrix).
    int("ctx", &["imatrix"], 16, MAX_TOKENS),
    int("chunks", &["imatrix"], 1, 1 << 24),
    int("requests", MEASURE, 1, 10_000),
    int("prompt", MEASURE, 1, MAX_TOKENS),
    int("gen", MEASURE, 1, MAX_TOKENS),
    of("watts_per_core", Ty::F64, Bound::positive("watts_per_core", 10_000.0)),
    of("grid", Ty::F64, Bound::float("grid", 0.0, 10_000.0)),
    of("max_loss", Ty::F64, Bound::float("max_loss", 0.0, 10_000.0)),
    // Benchmarks: lists of lengths, 0 skips a test.
    int("prompt", &["bench"], 0, MAX_TOKENS),
    int("gen", &["bench"], 0, MAX_TOKENS),
    int("repetitions", &["bench"], 1, 10_000),
    int("depth", &["bench"], 0, MAX_TOKENS),
    int("batches", &["bench"], 1, 1 << 16),
    // Encoders.
    int("batch_size", &[], 1, 1 << 16),
    int("batch_tokens", &[], 1, 1 << 24),
    of("max_length", Ty::Usize, MAX_LENGTH),
    int("window", &[], 3, MAX_TOKENS),
    int("stride", &[], 1, MAX_TOKENS),
    // Training (distill).
    int("max_sentences", &["distill"], 1, 1 << 32),
    int("ctx", &["distill", "finetune", "qat", "client"], 2, MAX_TOKENS),
    of("kl_weight", Ty::F32, Bound::float("kl_weight", 0.0, 1e6)),
    of("ce_weight", Ty::F32, Bound::float("ce_weight", 0.0, 1e6)),
    of("cos_weight", Ty::F32, Bound::float("cos_weight", 0.0, 1e6)),
    of("mse_weight", Ty::F32, Bound::float("mse_weight", 0.0, 1e6)),
    of("hidden_weight", Ty::F32, Bound::float("hidden_weight", 0.0, 1e6)),
    int("epochs", &["distill", "finetune", "qat", "train"], 1, 1 << 16),
    Setting { id: "steps", commands: &["distill", "finetune", "qat"], ty: Ty::U64, bound: Bound::int("steps", 1, 1 << 40) },
    int("batch", &["distill", "finetune", "qat", "train"], 1, 1 << 16),
    int("accumulate", &["distill", "finetune", "qat"], 1, 1 << 16),
    of("lr", Ty::F32, Bound::float("lr", 1e-12, 1e6)),
    of("warmup", Ty::F64, Bound::float("warmup", 0.0, 1.0)),
    of("weight_decay", Ty::F32, Bound::float("weight_decay", 0.0, 1.0)),
    of("clip", Ty::F32, Bound::float("clip", 0.0, 1e6)),
    Setting { id: "eval_every", commands: &["distill", "finetune", "qat"], ty: Ty::U64, bound: Bound::int("eval_every", 0, 1 << 40) },
    int("patience", &["distill", "finetune", "qat"], 0, 1 << 20),
    Setting { id: "checkpoint_every", commands: &["distill", "finetune", "qat"], ty: Ty::U64, bound: Bound::int("checkpoint_every", 0, 1 << 40) },
    of("max_minutes", Ty::F64, Bound::float("max_minutes", 1e-3, 1e7)),
    // LoRA (finetune, merge, run, chat, eval) and encoder fine-tuning (classify train).
    int("lora_rank", &["finetune", "client"], 1, 1 << 16),
    Setting { id: "scale", commands: &["finetune"], ty: Ty::F32, bound: Bound::float("scale", 1e-6, 1e6) },
    of("lora_alpha", Ty::F32, Bound::float("lora_alpha", 0.0, 1e6)),
    of("lora_scale", Ty::F32, Bound::float("lora_scale", 0.0, 1e6)),
    Setting { id: "scale", commands: &["merge"], ty: Ty::F32, bound: Bound::float("scale", 0.0, 1e6) },
    int("train_layers", &["train", "client"], 0, 1 << 16),
    // Classification heads.
    of("l2", Ty::F32, Bound::float("l2", 0.0, 1e6)),
    int("max_iter", &[], 1, 10_000_000),
    // Federated learning.
    of("connect_for", Ty::F64, Bound::float("connect_for", 0.0, 1e7)),
    int("max_message_mb", &["client"], 1, 1 << 14),
    of("max_norm", Ty::F64, Bound::positive("max_norm", 1e30)),
    of("dp_clip", Ty::F64, Bound::positive("dp_clip", 1e12)),
    of("dp_noise", Ty::F64, Bound::float("dp_noise", 0.0, 1e6)),
    of("dp_delta", Ty::F64, Bound::float("dp_delta", 1e-30, 0.5)),
    of("dp_sample_rate", Ty::F64, Bound::float("dp_sample_rate", 1e-9, 1.0)),
    of("dp_epsilon", Ty::F64, Bound::positive("dp_epsilon", 1e6)),
    of("test_share", Ty::F64, Bound::float("test_share", 0.01, 0.9)),
    int("clients", &["simulate"], 1, 1000),
    int("rounds", &["simulate"], 1, 100_000),
    int("local_epochs", &["simulate"], 1, 1000),
    int("krum_keep", &["simulate"], 0, 1000),
    int("bucket", &["simulate"], 0, 1000),
    of("proximal_mu", Ty::F64, Bound::float("proximal_mu", 0.0, 1e6)),
];

/// The setting of option `id` in subcommand `cmd`, if it is numeric.
pub fn find(cmd: &str, id: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.id == id && (s.commands.is_empty() || s.commands.contains(&cmd)))
}

/// A clap parser for `s`: the number, in range, as the field's type.
fn parser(s: &Setting) -> ValueParser {
    let bound = s.bound;
    let expect = move |e: SettingError| format!("it must be {}", e.expected);
    match s.ty {
        Ty::Usize => ValueParser::new(move |v: &str| -> Result<usize, String> { whole(&bound, v).map_err(expect).and_then(|n| usize::try_from(n).map_err(|e| e.to_string())) }),
        Ty::U64 => ValueParser::new(move |v: &str| -> Result<u64, String> { whole(&bound, v).map_err(expect).and_then(|n| u64::try_from(n).map_err(|e| e.to_string())) }),
        Ty::F32 => ValueParser::new(move |v: &str| -> Result<f32, String> { bound.parse(v).map(|x| x as f32).map_err(expect) }),
        Ty::F64 => ValueParser::new(move |v: &str| -> Result<f64, String> { bound.parse(v).map_err(expect) }),
    }
}

/// A whole number parsed exactly (no trip through f64, which would round large seeds), then
/// checked against `bound`.
fn whole(bound: &Bound, v: &str) -> Result<i128, SettingError> {
    let bad = |value: String| SettingError { name: bound.name.into(), value, expected: format!("a whole number from {}", bound.text()) };
    let n: i128 = v.trim().parse().map_err(|_| bad(format!("{v:?}")))?;
    bound.check(n as f64).map_err(|_| bad(n.to_string()))?;
    Ok(n)
}

/// Applies [`SETTINGS`] to `arg` of subcommand `cmd`.
fn apply_arg(cmd: &str, arg: Arg) -> Arg {
    let arg = if arg.get_action().takes_values() { arg.allow_negative_numbers(true) } else { arg };
    let Some(s) = find(cmd, arg.get_id().as_str()) else { return arg };
    // A value starting with '-' ("-1", "-inf") is this option's value, refused for its range.
    let arg = arg.allow_hyphen_values(true);
    let range = format!("[{}]", s.bound.text());
    let help = arg.get_help().map(|h| format!("{h} {range}")).unwrap_or(range.clone());
    let long = arg.get_long_help().map(|h| format!("{h}\n\nRange: {}.", s.bound.text()));
    let arg = arg.value_parser(parser(s)).help(help);
    match long {
        Some(l) => arg.long_help(l),
        None => arg,
    }
}

fn apply(cmd: Command) -> Command {
    let name = cmd.get_name().to_string();
    cmd.mut_args(|a| apply_arg(&name, a)).mut_subcommands(apply)
}

/// The command tree with every numeric option checked (see the module comment).
pub fn command() -> Command {
    use clap::CommandFactory;
    apply(crate::cli::Cli::command())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every option that takes a number (by its value name) has a row in the table, so a new
    /// numeric flag cannot skip the checks.
    #[test]
    fn every_numeric_option_has_a_range() {
        fn walk(cmd: &Command, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let numeric = a.get_value_names().is_some_and(|v| v.iter().any(|n| ["N", "X", "P", "T", "K", "W", "G", "PCT"].contains(&n.as_str())));
                if numeric && find(cmd.get_name(), a.get_id().as_str()).is_none() {
                    missing.push(format!("{} --{}", cmd.get_name(), a.get_id()));
                }
            }
            for s in cmd.get_subcommands() {
                walk(s, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&command(), &mut missing);
        assert!(missing.is_empty(), "numeric options without a range in SETTINGS: {missing:?}");
    }

    #[test]
    fn values_are_checked_when_parsed() {
        let parse = |args: &[&str]| command().try_get_matches_from(args);
        assert!(parse(&["smelt", "run", "--temp", "-1"]).unwrap_err().to_string().contains("0 to 100"));
        assert!(parse(&["smelt", "run", "--temp=nan"]).is_err());
        assert!(parse(&["smelt", "run", "--top-p", "2"]).is_err());
        assert!(parse(&["smelt", "run", "--min-p", "5"]).is_err());
        assert!(parse(&["smelt", "run", "--repeat-penalty=-2"]).is_err());
        assert!(parse(&["smelt", "run", "--temp", "0.5", "--seed", "18446744073709551615"]).is_ok());
        let m = parse(&["smelt", "run", "--seed", "9007199254740993"]).unwrap();
        let seed = m.subcommand_matches("run").unwrap().get_one::<u64>("seed").copied();
        assert_eq!(seed, Some(9_007_199_254_740_993), "seeds are exact, not rounded through f64");
        assert!(parse(&["smelt", "embed", "--stride", "0", "--window", "8"]).is_err());
        assert!(parse(&["smelt", "bench", "-p", "0,512"]).is_ok(), "0 skips a bench test");
        assert!(parse(&["smelt", "eval", "--prompt", "0"]).is_err());
        assert!(parse(&["smelt", "-t", "5000", "models"]).is_err());
        assert!(parse(&["smelt", "-t", "1.5", "models"]).is_err());
    }

    #[test]
    fn help_states_each_range() {
        let mut cmd = command();
        let mut run = cmd.find_subcommand_mut("run").unwrap().clone().term_width(400);
        let help = run.render_help().to_string();
        assert!(help.contains("[0 to 100]") && help.contains("[more than 0 and at most 10]") && help.contains("[0 to 18446744073709551615]"), "{help}");
    }
}
