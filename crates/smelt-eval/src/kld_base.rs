//! llama-perplexity's logits file (`--kl-divergence-base FILE`), written from smelt's logits, so
//! that `llama-perplexity -m MODEL --kl-divergence-base FILE --kl-divergence` compares llama.cpp's
//! run of a model with smelt's on the very same tokens: KL divergence, top-1 agreement ("same
//! top p"), perplexity of both.
//!
//! Layout (little-endian): `"_logits_"`, `n_ctx` (u32), `n_vocab` (i32), `n_chunk` (i32), the
//! `n_chunk * n_ctx` tokens (i32, as the text tokenized, before any BOS replacement), then for
//! every chunk and every scored position `j` in `n_ctx/2 .. n_ctx-1` a record of
//! `nv = 2 * ceil(n_vocab / 2) + 4` u16: two f32 (`scale`, `min_log_prob`) then one u16 per token,
//! the log-probability quantized over the top 16 nats:
//!
//! ```text
//! max = max z, lo = max(min z, max - 16), lse = ln sum exp(z - max)
//! scale = (max - lo) / 65535, min_log_prob = lo - max - lse
//! q_i = round((z_i - lo) / scale) if z_i > lo else 0      log p_i = scale q_i + min_log_prob
//! ```

use std::io::Write;

/// Writes the file chunk by chunk.
pub struct KldBaseWriter<W: Write> {
    out: W,
    vocab: usize,
    record: Vec<u16>,
}

impl<W: Write> KldBaseWriter<W> {
    /// The header: context, vocabulary, chunks and their tokens (`chunks * ctx` of them).
    pub fn new(mut out: W, ctx: usize, vocab: usize, tokens: &[u32]) -> std::io::Result<Self> {
        let chunks = tokens.len() / ctx.max(1);
        out.write_all(b"_logits_")?;
        out.write_all(&(ctx as u32).to_le_bytes())?;
        out.write_all(&(vocab as i32).to_le_bytes())?;
        out.write_all(&(chunks as i32).to_le_bytes())?;
        for &t in &tokens[..chunks * ctx] {
            out.write_all(&(t as i32).to_le_bytes())?;
        }
        Ok(KldBaseWriter { out, vocab, record: vec![0; 2 * vocab.div_ceil(2) + 4] })
    }

    /// One chunk's scored positions: `logits` holds `n * vocab` raw logits.
    pub fn chunk(&mut self, logits: &[f32]) -> std::io::Result<()> {
        for z in logits.chunks_exact(self.vocab) {
            encode(z, &mut self.record);
            let bytes: Vec<u8> = self.record.iter().flat_map(|v| v.to_le_bytes()).collect();
            self.out.write_all(&bytes)?;
        }
        Ok(())
    }

    pub fn finish(mut self) -> std::io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// One position's record (see the module doc).
fn encode(z: &[f32], rec: &mut [u16]) {
    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lo = z.iter().copied().fold(f32::INFINITY, f32::min).max(max - 16.0);
    let sum: f64 = z.iter().map(|&v| (v - max).exp() as f64).sum();
    let lse = sum.ln() as f32;
    let min_log_prob = lo - max - lse;
    let scale = (max - lo) / 65535.0;
    rec[..2].copy_from_slice(&split(scale));
    rec[2..4].copy_from_slice(&split(min_log_prob));
    let q = &mut rec[4..4 + z.len()];
    if scale > 0.0 {
        let inv = 1.0 / scale;
        for (o, &v) in q.iter_mut().zip(z) {
            *o = if v > lo { (inv * (v - lo)).round_ties_even() as u16 } else { 0 };
        }
    } else {
        q.fill(0);
    }
}

/// An f32 as the two u16 it occupies in memory (little-endian).
fn split(x: f32) -> [u16; 2] {
    let b = x.to_le_bytes();
    [u16::from_le_bytes([b[0], b[1]]), u16::from_le_bytes([b[2], b[3]])]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The decoded log-probabilities are the true ones within half a quantization step.
    #[test]
    fn records_decode_to_the_log_probabilities() {
        let z: Vec<f32> = (0..101).map(|i| ((i as f32) * 0.731).sin() * 9.0).collect();
        let mut rec = vec![0u16; 2 * 101usize.div_ceil(2) + 4];
        encode(&z, &mut rec);
        let f = |a: u16, b: u16| f32::from_le_bytes([a.to_le_bytes()[0], a.to_le_bytes()[1], b.to_le_bytes()[0], b.to_le_bytes()[1]]);
        let (scale, min_lp) = (f(rec[0], rec[1]), f(rec[2], rec[3]));
        let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = max + z.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
        for (i, &v) in z.iter().enumerate() {
            let want = v as f64 - lse;
            let got = (scale * rec[4 + i] as f32 + min_lp) as f64;
            if want > min_lp as f64 {
                assert!((got - want).abs() <= scale as f64, "token {i}: {got} vs {want}");
            }
        }
        let mut out = Vec::new();
        let mut w = KldBaseWriter::new(&mut out, 4, 101, &[1, 2, 3, 4, 5, 6, 7, 8, 9]).unwrap();
        w.chunk(&z).unwrap();
        w.finish().unwrap();
        assert_eq!(&out[..8], b"_logits_");
        assert_eq!(out.len(), 8 + 12 + 8 * 4 + rec.len() * 2, "header, 2 chunks of 4 tokens, one record");
    }
}
