//! The quality half of `smelt eval`/`compare`/`shrink`: decoders scored in one pass over the
//! text (perplexity, and KLD against the reference), encoders embedded once per model and
//! compared with the reference's embeddings.

use std::path::Path;

use anyhow::{bail, Context, Result};
use smelt_eval::encoder::{self, EncoderQuality, Split};
use smelt_eval::kld_base::KldBaseWriter;
use smelt_eval::lm::{self, PplOptions};
use smelt_eval::record::{ModelResult, Record};
use smelt_kernels::pool::ThreadPool;
use smelt_models::classify::TrainOptions;
use smelt_models::{EmbedOptions, Encoder, Llama, Tokenizer};

use super::eval::{text, Loaded};
use crate::cli::EvalOptions;
use crate::progress::Progress;

/// Sentences of a prose text: paragraphs (blank-line separated) joined into one line each, cut
/// after `.`, `!` or `?` followed by a space; those of at least 4 words are kept.
pub fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let para = para.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut start = 0;
        let b = para.as_bytes();
        for i in 0..b.len() {
            let end = matches!(b[i], b'.' | b'!' | b'?') && (i + 1 == b.len() || b[i + 1] == b' ');
            if end {
                let s = para[start..=i].trim();
                if s.split_whitespace().count() >= 4 {
                    out.push(s.to_string());
                }
                start = i + 1;
            }
        }
        let rest = para[start..].trim();
        if rest.split_whitespace().count() >= 4 {
            out.push(rest.to_string());
        }
    }
    out
}

fn same_tokenizer(a: &Tokenizer, b: &Tokenizer) -> bool {
    a.vocab_size() == b.vocab_size() && (0..a.vocab_size() as u32).all(|i| a.token_text(i) == b.token_text(i))
}

/// Fills each result's quality; `has_ref`: `loaded[0]` is the reference.
pub fn quality(loaded: &[Loaded], has_ref: bool, results: &mut [ModelResult], rec: &mut Record, opts: &EvalOptions, pool: &ThreadPool, quiet: bool) -> Result<()> {
    let decoders: Vec<(&Llama, &Tokenizer)> = loaded.iter().filter_map(|l| if let Loaded::Decoder { model, tok } = l { Some((&**model, &**tok)) } else { None }).collect();
    let encoders: Vec<&Encoder> = loaded.iter().filter_map(|l| if let Loaded::Encoder(e) = l { Some(&**e) } else { None }).collect();
    match (decoders.len(), encoders.len()) {
        (_, 0) => decoder_quality(&decoders, has_ref, results, rec, opts, pool, quiet),
        (0, _) => encoder_quality(&encoders, has_ref, results, rec, opts, pool, quiet),
        _ => bail!("decoders and encoders cannot be compared with each other; evaluate them separately"),
    }
}

fn decoder_quality(models: &[(&Llama, &Tokenizer)], has_ref: bool, results: &mut [ModelResult], rec: &mut Record, opts: &EvalOptions, pool: &ThreadPool, quiet: bool) -> Result<()> {
    let (tok0, names): (&Tokenizer, Vec<String>) = (models[0].1, results.iter().map(|r| r.name.clone()).collect());
    for (k, (_, t)) in models.iter().enumerate().skip(1) {
        if !same_tokenizer(tok0, t) {
            bail!("{} and {} have different vocabularies ({} and {} tokens, or different token texts): perplexity and KL divergence can only be compared between models that share a tokenizer", names[0], names[k], tok0.vocab_size(), t.vocab_size());
        }
    }
    let (body, source) = text(opts)?;
    let tokens = tok0.encode(&body, false);
    let ppl = PplOptions { ctx: opts.ctx, max_chunks: opts.chunks, bos: if tok0.add_bos { tok0.bos } else { None } };
    let chunks = ppl.chunks(tokens.len());
    if chunks == 0 {
        bail!("{source} has {} tokens, fewer than one chunk of --ctx {}: give a longer --text or a smaller --ctx", tokens.len(), opts.ctx);
    }
    rec.data.push(format!(
        "quality: {source}, {} tokens; {chunks} chunks of {} tokens, the second half of each scored ({} tokens) as llama-perplexity does",
        tokens.len(),
        opts.ctx,
        chunks * ppl.scored_per_chunk()
    ));
    let llamas: Vec<&Llama> = models.iter().map(|m| m.0).collect();
    let (reference, rest) = if has_ref { (Some(llamas[0]), &llamas[1..]) } else { (None, &llamas[..]) };
    let mut bar = Progress::new("scoring", (chunks * llamas.len()) as u64, false, quiet);
    let off = has_ref as usize;
    // --save-logits: the one model's logits, streamed to a temporary file renamed at the end.
    let mut save = match &opts.save_logits {
        None => None,
        Some(path) => {
            if has_ref || rest.len() != 1 {
                bail!("--save-logits writes one decoder's logits: give one model and no --against");
            }
            let tmp = smelt_formats::fsutil::temp_path_for(path);
            let f = std::io::BufWriter::new(std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?);
            let n = chunks * opts.ctx;
            Some((path.clone(), tmp, KldBaseWriter::new(f, opts.ctx, rest[0].cfg.vocab, &tokens[..n])?))
        }
    };
    let result = lm::evaluate(pool, &tokens, &ppl, reference, rest, |d| {
        let name = d.model.map_or(&names[0], |k| &names[k + off]);
        bar.inc(1, &format!("chunk {}/{}: {name} PPL {:.3}", d.chunk + 1, d.chunks, d.ppl));
        if let (Some((_, _, w)), Some(_)) = (save.as_mut(), d.model) {
            w.chunk(d.logits).map_err(|e| smelt_eval::EvalError::BadOption(format!("writing the logits: {e}")))?;
        }
        Ok(())
    });
    if let Some((path, tmp, w)) = save.take() {
        let done = if result.is_ok() { w.finish().and_then(|_| std::fs::rename(&tmp, &path)) } else { Ok(()) };
        if result.is_err() || done.is_err() {
            std::fs::remove_file(&tmp).ok();
        }
        done.with_context(|| format!("cannot write {}", path.display()))?;
    }
    let (ref_q, qs) = result?;
    bar.finish();
    if let Some(q) = ref_q {
        results[0].lm = Some(q);
    }
    for (r, q) in results[off..].iter_mut().zip(qs) {
        r.lm = Some(q);
    }
    Ok(())
}

type Embeddings = Vec<Vec<f32>>;

fn embed_all(enc: &Encoder, pool: &ThreadPool, texts: &[&str], bar: &mut Progress, name: &str) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(256) {
        out.extend(enc.embed(pool, chunk, &EmbedOptions::default())?);
        bar.inc(chunk.len() as u64, name);
    }
    Ok(out)
}

/// One labelled split: texts and label indices (labels from the training split).
struct Task {
    name: String,
    labels: Vec<String>,
    train: (Vec<String>, Vec<usize>),
    test: (Vec<String>, Vec<usize>),
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn read_task(dir: &Path) -> Result<Task> {
    let read = |f: &str| super::classify::read_labelled(&dir.join(f)).with_context(|| format!("{}: a task folder holds train.jsonl and test.jsonl", dir.display()));
    let (tr, te) = (read("train.jsonl")?, read("test.jsonl")?);
    let labels = super::classify::labels_of(&tr);
    let idx = |l: &str| labels.iter().position(|x| x == l).with_context(|| format!("{}: test label {l:?} is not among the training labels", dir.display()));
    let train = (tr.iter().map(|e| e.text.clone()).collect(), tr.iter().map(|e| idx(&e.label)).collect::<Result<_>>()?);
    let test = (te.iter().map(|e| e.text.clone()).collect(), te.iter().map(|e| idx(&e.label)).collect::<Result<_>>()?);
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "task".into());
    Ok(Task { name, labels, train, test })
}

fn encoder_quality(models: &[&Encoder], has_ref: bool, results: &mut [ModelResult], rec: &mut Record, opts: &EvalOptions, pool: &ThreadPool, quiet: bool) -> Result<()> {
    let (body, source) = text(opts)?;
    let sts = match &opts.sts {
        Some(p) => {
            let raw = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let (texts, gold, bad) = encoder::read_sts(&raw);
            if gold.len() < 2 {
                bail!("{}: no STS pairs found (expected tab-separated lines: genre, file, year, id, score, sentence 1, sentence 2)", p.display());
            }
            rec.data.push(format!("STS: {}, {} pairs{}", p.display(), gold.len(), if bad > 0 { format!(" ({bad} unreadable lines skipped)") } else { String::new() }));
            Some((texts, gold))
        }
        None => None,
    };
    let sents: Vec<String> = match &sts {
        Some((t, _)) => t.clone(),
        None => sentences(&body).into_iter().take(2000).collect(),
    };
    if sents.len() < 2 {
        bail!("{source}: fewer than two sentences of 4 words or more to embed");
    }
    // Retrieval: STS first sentences as queries, second sentences as documents; or, from plain
    // text, the first half of every fifth sentence as a query over all the sentences.
    let queries: Vec<String> = match &sts {
        Some(_) => Vec::new(),
        None => sents.iter().step_by(5).map(|s| s.split_whitespace().take((s.split_whitespace().count() / 2).max(2)).collect::<Vec<_>>().join(" ")).collect(),
    };
    if sts.is_none() {
        rec.data.push(format!("fidelity: {} sentences of {source}; retrieval: {} half-sentence queries over them, overlap@10", sents.len(), queries.len()));
    }
    let tasks: Vec<Task> = opts.classify.iter().map(|d| read_task(d)).collect::<Result<_>>()?;
    if !tasks.is_empty() && !has_ref {
        bail!("--classify keeps a head trained on the reference fixed: give the reference with --against");
    }
    let per_model: usize = sents.len() + queries.len() + tasks.iter().map(|t| t.train.0.len() + t.test.0.len()).sum::<usize>();
    let mut bar = Progress::new("embedding", (per_model * models.len()) as u64, false, quiet);
    let (sent_refs, query_refs) = (refs(&sents), refs(&queries));
    let mut embs = Vec::new();
    for (m, r) in models.iter().zip(results.iter()) {
        let s = embed_all(m, pool, &sent_refs, &mut bar, &r.name)?;
        let q = embed_all(m, pool, &query_refs, &mut bar, &r.name)?;
        let t: Vec<(Embeddings, Embeddings)> = tasks.iter().map(|t| Ok((embed_all(m, pool, &refs(&t.train.0), &mut bar, &r.name)?, embed_all(m, pool, &refs(&t.test.0), &mut bar, &r.name)?))).collect::<Result<_>>()?;
        embs.push((s, q, t));
    }
    bar.finish();
    let split = |e: &[Vec<f32>], parity: usize| e.iter().skip(parity).step_by(2).cloned().collect::<Vec<_>>();
    for (k, r) in results.iter_mut().enumerate() {
        let (s, q, t) = &embs[k];
        let mut quality = EncoderQuality { sts: sts.as_ref().map(|(_, g)| encoder::sts(s, g)).transpose()?, ..Default::default() };
        if has_ref {
            let (rs, rq, rt) = &embs[0];
            quality.cosine = Some(encoder::fidelity(s, rs)?);
            quality.retrieval = Some(match &sts {
                Some(_) => encoder::retrieval(&split(s, 0), &split(s, 1), &split(rs, 0), &split(rs, 1), 10)?,
                None => encoder::retrieval(q, s, rq, rs, 10)?,
            });
            for (i, task) in tasks.iter().enumerate() {
                let ref_splits = (Split { x: &rt[i].0, y: &task.train.1 }, Split { x: &rt[i].1, y: &task.test.1 });
                let own = (Split { x: &t[i].0, y: &task.train.1 }, Split { x: &t[i].1, y: &task.test.1 });
                quality.classification.push(encoder::classification(&task.name, &task.labels, ref_splits, own, TrainOptions::default())?);
            }
        }
        r.encoder = Some(quality);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn sentences_split_prose() {
        let s = super::sentences("It is a truth universally acknowledged. Short one.\nStill the\nsame paragraph here!\n\nA new paragraph starts here");
        assert_eq!(s, vec!["It is a truth universally acknowledged.", "Still the same paragraph here!", "A new paragraph starts here"]);
    }
}
