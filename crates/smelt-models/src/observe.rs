//! The activation observer: a hook that sees the input of every weight matrix during a forward
//! pass, for calibration (importance vectors, GPTQ Hessians, int8 activation ranges).
//!
//! A block's matrices are grouped by the input they read: Q, K and V read the same normalized
//! hidden state (one observation for the three), as do gate and up in a SwiGLU FFN (BERT's one
//! intermediate matrix reads it alone). The observer is called once per (layer, input) per
//! forward pass with the rows of that input, `rows x cols`, row-major, exactly as the product
//! consumes them. Passing no observer costs one `Option` test per input.

/// Which matrices' input an observation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MatrixInput {
    /// The normalized hidden state read by Q, K and V (width `d`).
    AttnQkv,
    /// The attention's mixed values read by the output projection (width `n_heads x d_head`).
    AttnOutput,
    /// The normalized hidden state read by the FFN's gate and up matrices (BERT: intermediate).
    FfnUp,
    /// The FFN's activation read by the down projection (width `ffn`).
    FfnDown,
    /// The final normalized hidden state read by the output head (decoders).
    Output,
}

impl MatrixInput {
    /// The four inputs of a transformer block, in the order a forward pass meets them.
    pub const BLOCK: [MatrixInput; 4] = [MatrixInput::AttnQkv, MatrixInput::AttnOutput, MatrixInput::FfnUp, MatrixInput::FfnDown];

    /// Position in [`MatrixInput::BLOCK`] (the int8 spec's matrix kinds: qkv, o, up, down).
    pub fn index(self) -> usize {
        match self {
            MatrixInput::AttnQkv => 0,
            MatrixInput::AttnOutput => 1,
            MatrixInput::FfnUp => 2,
            MatrixInput::FfnDown | MatrixInput::Output => 3,
        }
    }

    /// The GGUF names (llama.cpp's) of the matrices of layer `layer` that read this input; the
    /// output head is `output.weight` (`token_embd.weight` when the embedding is tied).
    pub fn llama_tensors(self, layer: usize) -> Vec<String> {
        let b = |s: &str| format!("blk.{layer}.{s}.weight");
        match self {
            MatrixInput::AttnQkv => vec![b("attn_q"), b("attn_k"), b("attn_v")],
            MatrixInput::AttnOutput => vec![b("attn_output")],
            MatrixInput::FfnUp => vec![b("ffn_gate"), b("ffn_up")],
            MatrixInput::FfnDown => vec![b("ffn_down")],
            MatrixInput::Output => vec!["output.weight".into()],
        }
    }
}

/// Sees the inputs of the weight matrices during a forward pass.
pub trait Observer {
    /// `x` holds `rows` input rows of `cols` values (row-major) of `input` in `layer` (for
    /// [`MatrixInput::Output`], `layer` is the number of blocks).
    fn observe(&mut self, layer: usize, input: MatrixInput, x: &[f32], rows: usize, cols: usize);
}

/// Calls `obs` when there is one (the forward passes' single branch).
#[inline]
pub(crate) fn note(obs: &mut Option<&mut dyn Observer>, layer: usize, input: MatrixInput, x: &[f32], rows: usize, cols: usize) {
    if let Some(o) = obs {
        o.observe(layer, input, &x[..rows * cols], rows, cols);
    }
}
