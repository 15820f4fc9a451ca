//! A student encoder from a config alone: the shape a user asks for (fewer layers, fewer heads,
//! a narrower FFN), with the teacher's hidden size and vocabulary so that the two can be compared
//! vector for vector without a projection.
//!
//! The embeddings (word, position, token type) and their LayerNorm are the teacher's, as
//! DistilBERT and TinyBERT start theirs; every layer is initialized as HF's `BertModel` does
//! (`_init_weights`): matrices `N(0, initializer_range^2)` (0.02 unless the config says),
//! biases 0, LayerNorm gains 1 and biases 0. The draw is seeded.

use smelt_formats::hf_config::BertConfig;
use smelt_models::backward::BertTrain;
use smelt_train::order::SplitMix64;

use crate::CompressError;

/// The student of shape `cfg`, from `teacher`'s embeddings and a seeded initialization; refuses
/// a config whose hidden size, vocabulary, positions or token types differ from the teacher's.
pub fn student_from_config(cfg: BertConfig, initializer_range: f64, teacher: &BertTrain, seed: u64) -> Result<BertTrain, CompressError> {
    let t = &teacher.cfg;
    let same = [("hidden_size", cfg.hidden_size, t.hidden_size), ("vocab_size", cfg.vocab_size, t.vocab_size), ("max_position_embeddings", cfg.max_position_embeddings, t.max_position_embeddings), ("type_vocab_size", cfg.type_vocab_size, t.type_vocab_size)];
    if let Some((key, s, te)) = same.iter().find(|(_, s, t)| s != t) {
        return Err(CompressError::Distill(format!("the student config's {key} is {s} and the teacher's {te}: a student from a config keeps the teacher's hidden size and vocabulary (there is no projection between different widths); change the layers, heads or intermediate_size instead")));
    }
    if !(initializer_range.is_finite() && initializer_range > 0.0 && initializer_range < 1.0) {
        return Err(CompressError::Distill(format!("initializer_range {initializer_range}: give a standard deviation in (0, 1), 0.02 as BERT's")));
    }
    let prefix = teacher.prefix().to_string();
    let embeddings = format!("{prefix}embeddings.");
    let mut rng = SplitMix64(seed ^ 0x5EED_5EED_5EED_5EED);
    BertTrain::from_fn(cfg, &prefix, &mut |name, shape| {
        let n: usize = shape.iter().product();
        if name.starts_with(&embeddings) {
            return teacher.params.get(name).map(<[f32]>::to_vec).ok_or_else(|| smelt_models::ModelError::MissingTensor { name: name.into(), arch: "bert".into() });
        }
        Ok(if name.ends_with("LayerNorm.weight") {
            vec![1.0; n]
        } else if name.ends_with(".bias") {
            vec![0.0; n]
        } else {
            (0..n).map(|_| (rng.normal() * initializer_range) as f32).collect()
        })
    })
    .map_err(CompressError::from)
}
