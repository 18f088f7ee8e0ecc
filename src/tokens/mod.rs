//! Exact OpenAI tokenisation, embedded vocabularies, no network.
//!
//! The stable API other modules build on: [`EncodingName`], [`encoding`],
//! and the counting / encoding methods of [`Encoding`].

use std::sync::OnceLock;

use tiktoken_rs::CoreBPE;

/// The OpenAI encodings shipped inside the extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EncodingName {
    O200kBase,
    O200kHarmony,
    Cl100kBase,
    P50kBase,
    R50kBase,
}

impl EncodingName {
    pub const ALL: [EncodingName; 5] = [
        EncodingName::O200kBase,
        EncodingName::O200kHarmony,
        EncodingName::Cl100kBase,
        EncodingName::P50kBase,
        EncodingName::R50kBase,
    ];

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EncodingName::O200kBase => "o200k_base",
            EncodingName::O200kHarmony => "o200k_harmony",
            EncodingName::Cl100kBase => "cl100k_base",
            EncodingName::P50kBase => "p50k_base",
            EncodingName::R50kBase => "r50k_base",
        }
    }
}

/// One loaded encoding, shared by every thread for the life of the process.
pub struct Encoding {
    name: EncodingName,
    bpe: &'static CoreBPE,
}

/// The process-wide encoding, loaded on first use.
pub fn encoding(name: EncodingName) -> &'static Encoding {
    static CELLS: [OnceLock<Encoding>; 5] = [
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
    ];
    let idx = EncodingName::ALL
        .iter()
        .position(|e| *e == name)
        .unwrap_or_default();
    CELLS[idx].get_or_init(|| Encoding {
        name,
        bpe: match name {
            EncodingName::O200kBase => tiktoken_rs::o200k_base_singleton(),
            EncodingName::O200kHarmony => tiktoken_rs::o200k_harmony_singleton(),
            EncodingName::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
            EncodingName::P50kBase => tiktoken_rs::p50k_base_singleton(),
            EncodingName::R50kBase => tiktoken_rs::r50k_base_singleton(),
        },
    })
}

impl Encoding {
    pub fn name(&self) -> EncodingName {
        self.name
    }

    /// Number of tokens of `text` encoded as ordinary text (special tokens not recognised).
    pub fn count(&self, text: &str) -> usize {
        self.bpe.encode_ordinary(text).len()
    }

    /// Token ids of `text` encoded as ordinary text.
    pub fn encode_ordinary(&self, text: &str) -> Vec<u32> {
        self.bpe.encode_ordinary(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_world_counts_match_tiktoken() {
        // ids from tiktoken 0.14: enc.encode_ordinary("hello world")
        assert_eq!(
            encoding(EncodingName::Cl100kBase).encode_ordinary("hello world"),
            vec![15339, 1917]
        );
        assert_eq!(encoding(EncodingName::O200kBase).count("hello world"), 2);
    }

    #[test]
    fn names_round_trip() {
        for e in EncodingName::ALL {
            assert_eq!(EncodingName::parse(e.as_str()), Some(e));
        }
        assert_eq!(EncodingName::parse("gpt2"), None);
    }
}
