//! Rebuilding a byte-level BPE tokenizer from GGUF metadata.
//!
//! A GGUF carries the vocabulary (`tokenizer.ggml.tokens`, already in GPT-2's byte-to-unicode spelling, e.g.
//! `Ġthe`), the merges, a type per token (3 = control, 4 = user-defined) and the special ids, but not the
//! pre-tokenizer: only its name in `tokenizer.ggml.pre` (llama.cpp's names). We map each supported name to the
//! pre-tokenization its Hugging Face `tokenizer.json` performs:
//!
//! | `tokenizer.ggml.pre` | split |
//! | --- | --- |
//! | `smollm`, `starcoder` | every numeric character alone, then the GPT-2 regex |
//! | `llama-bpe`, `llama3`, `llama-v3` | the Llama 3 regex (numbers in runs of up to 3 digits) |
//! | `qwen2`, `deepseek-r1-qwen` | the Qwen2 regex (single digits) |
//! | `gpt2`, `default` (or absent) | the GPT-2 regex |
//!
//! with the byte-level mapping without a prefix space. candle's `TokenizerFromGguf` maps `smollm` to a
//! default byte-level pre-tokenizer with `add_prefix_space = true` and no digit split, which gives wrong ids
//! (DESIGN section 7); hence this module. Any other name is refused rather than guessed.

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::Parts;
use crate::error::{ModelError, Result};

/// Llama 3's split: case-insensitive contractions, letters with one leading non-letter, numbers of 1-3 digits.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's split: as Llama 3's but every digit alone.
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token type of control tokens (`<|im_start|>`): special, matched whole in text, skippable on decode.
const TOKEN_TYPE_CONTROL: i64 = 3;
/// GGUF token type of user-defined tokens (`<think>`): matched whole in text but not special.
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// The pre-tokenizations we can rebuild from a `tokenizer.ggml.pre` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PreTokenizerKind {
    /// The GPT-2 regex.
    Gpt2,
    /// Each numeric character alone, then the GPT-2 regex (SmolLM, StarCoder).
    DigitsThenGpt2,
    /// The Llama 3 regex.
    Llama3,
    /// The Qwen2 regex.
    Qwen2,
}

impl PreTokenizerKind {
    /// The pre-tokenization llama.cpp's name `name` stands for; an unknown name is
    /// [`ModelError::Unsupported`].
    pub(crate) fn from_gguf_name(name: &str) -> Result<Self> {
        match name {
            "smollm" | "starcoder" => Ok(Self::DigitsThenGpt2),
            "llama-bpe" | "llama3" | "llama-v3" => Ok(Self::Llama3),
            "qwen2" | "deepseek-r1-qwen" => Ok(Self::Qwen2),
            "gpt2" => Ok(Self::Gpt2),
            "default" => {
                // llama.cpp's converter writes `default` when it did not recognise the tokenizer; GPT-2's split is
                // the usual answer for byte-level BPE but not a certain one.
                tracing::warn!("GGUF pre-tokenizer `default`: using the GPT-2 split, which may not match the model");
                Ok(Self::Gpt2)
            }
            other => Err(ModelError::Unsupported(format!(
                "GGUF pre-tokenizer `{other}` (tokenizer.ggml.pre); supported: smollm, starcoder, llama-bpe, \
                 llama3, llama-v3, qwen2, deepseek-r1-qwen, gpt2, default"
            ))),
        }
    }

    /// The `tokenizers` pre-tokenizer, laid out as the model's Hugging Face `tokenizer.json` lays it out: a regex
    /// split then the byte-level mapping without prefix space (Llama 3, Qwen2), or `ByteLevel` splitting with its
    /// built-in GPT-2 regex, preceded by `Digits(individual_digits)` for SmolLM/StarCoder. (`Digits` tests
    /// Rust's `char::is_numeric`, which is what transformers runs for SmolLM2; llama.cpp's `\p{N}` regex differs
    /// from it only on a few code points added in recent Unicode versions.)
    pub(crate) fn pre_tokenizer(self) -> Result<PreTokenizerWrapper> {
        let regex_then_bytes = |pattern: &str| -> Result<Vec<PreTokenizerWrapper>> {
            let split = Split::new(SplitPattern::Regex(pattern.to_owned()), SplitDelimiterBehavior::Isolated, false)
                .map_err(|e| ModelError::Tokenizer(format!("pre-tokenizer regex {pattern:?}: {e}")))?;
            Ok(vec![
                PreTokenizerWrapper::Split(split),
                PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
            ])
        };
        let gpt2_bytes = || PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true));
        let steps = match self {
            Self::Gpt2 => vec![gpt2_bytes()],
            Self::DigitsThenGpt2 => vec![PreTokenizerWrapper::Digits(Digits::new(true)), gpt2_bytes()],
            Self::Llama3 => regex_then_bytes(LLAMA3_SPLIT)?,
            Self::Qwen2 => regex_then_bytes(QWEN2_SPLIT)?,
        };
        Ok(PreTokenizerWrapper::Sequence(Sequence::new(steps)))
    }

    /// Llama 3's `tokenizer.json` looks a whole pre-token up in the vocabulary before merging
    /// (`ignore_merges`); the others always merge.
    fn ignore_merges(self) -> bool {
        self == Self::Llama3
    }

    /// Whether BOS is added to plain text when the file has no `tokenizer.ggml.add_bos_token` (llama.cpp's
    /// default: only the Llama 3 family adds it).
    fn default_add_bos(self) -> bool {
        self == Self::Llama3
    }
}

/// Reads everything the tokenizer needs from the metadata.
pub(super) fn parts_from_gguf(content: &Content) -> Result<Parts> {
    let meta = Metadata(content);
    let model = meta.string("tokenizer.ggml.model")?.ok_or_else(|| {
        ModelError::Unsupported("the GGUF has no tokenizer (no tokenizer.ggml.model metadata)".into())
    })?;
    if model != "gpt2" {
        return Err(ModelError::Unsupported(format!(
            "GGUF tokenizer model `{model}` (tokenizer.ggml.model); only byte-level BPE (`gpt2`) is implemented"
        )));
    }
    let pre_name = meta.string("tokenizer.ggml.pre")?.unwrap_or_else(|| {
        tracing::warn!("the GGUF has no tokenizer.ggml.pre; treating it as `default`");
        "default"
    });
    let kind = PreTokenizerKind::from_gguf_name(pre_name)?;

    let tokens = meta.strings("tokenizer.ggml.tokens")?;
    let merges = meta.strings("tokenizer.ggml.merges")?;
    let token_types = meta.integers("tokenizer.ggml.token_type")?;
    if tokens.is_empty() {
        return Err(ModelError::Tokenizer("tokenizer.ggml.tokens is missing or empty".into()));
    }
    if !token_types.is_empty() && token_types.len() != tokens.len() {
        return Err(ModelError::Tokenizer(format!(
            "tokenizer.ggml.token_type has {} entries for {} tokens",
            token_types.len(),
            tokens.len()
        )));
    }

    let mut vocab = Vocab::default();
    for (id, token) in tokens.iter().enumerate() {
        // A duplicated spelling keeps its first id, as llama.cpp's lookup does.
        vocab.entry(token.to_string()).or_insert(id as u32);
    }
    let merges = merges.iter().map(|m| split_merge(m)).collect::<Result<Vec<_>>>()?;
    let bpe =
        BPE::builder().vocab_and_merges(vocab, merges).ignore_merges(kind.ignore_merges()).build().map_err(|e| {
            ModelError::Tokenizer(format!("cannot build the BPE model from the GGUF vocabulary: {e}"))
        })?;

    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(kind.pre_tokenizer()?));
    inner.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())));
    let typed = |wanted: i64| {
        tokens.iter().zip(&token_types).filter(move |(_, &t)| t == wanted).map(|(token, _)| token.to_string())
    };
    let special: Vec<AddedToken> =
        typed(TOKEN_TYPE_CONTROL).map(|t| AddedToken::from(t, true).normalized(false)).collect();
    let user_defined: Vec<AddedToken> =
        typed(TOKEN_TYPE_USER_DEFINED).map(|t| AddedToken::from(t, false).normalized(false)).collect();
    inner.add_special_tokens(special).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    inner.add_tokens(user_defined).map_err(|e| ModelError::Tokenizer(e.to_string()))?;

    let more_eos_ids = ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"]
        .into_iter()
        .filter_map(|key| meta.id(key).transpose())
        .collect::<Result<Vec<u32>>>()?;
    Ok(Parts {
        inner,
        bos_id: meta.id("tokenizer.ggml.bos_token_id")?,
        eos_id: meta.id("tokenizer.ggml.eos_token_id")?,
        more_eos_ids,
        pad_id: meta.id("tokenizer.ggml.padding_token_id")?,
        add_bos: meta.bool("tokenizer.ggml.add_bos_token")?.unwrap_or(kind.default_add_bos()),
        chat_template: meta.string("tokenizer.chat_template")?.map(str::to_owned),
    })
}

/// `"Ġ t"` -> `("Ġ", "t")`. The split is at the first space after the first character, as in llama.cpp, so a
/// merge whose left part is itself a space still parses.
fn split_merge(merge: &str) -> Result<(String, String)> {
    let first_len = merge.chars().next().map_or(0, char::len_utf8);
    match merge[first_len..].find(' ') {
        Some(pos) => {
            let (left, right) = merge.split_at(first_len + pos);
            Ok((left.to_owned(), right[1..].to_owned()))
        }
        None => Err(ModelError::Tokenizer(format!("tokenizer.ggml.merges entry {merge:?} is not `left right`"))),
    }
}

/// Typed access to GGUF metadata with errors that name the key.
struct Metadata<'a>(&'a Content);

impl<'a> Metadata<'a> {
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.0.metadata.get(key)
    }

    fn type_error(key: &str, wanted: &str, found: &Value) -> ModelError {
        ModelError::Tokenizer(format!("GGUF metadata {key}: expected {wanted}, found {:?}", found.value_type()))
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(other) => Err(Self::type_error(key, "a string", other)),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(Self::type_error(key, "a boolean", other)),
        }
    }

    /// A token id: any integer type (writers differ), non-negative and within u32.
    fn id(&self, key: &str) -> Result<Option<u32>> {
        let Some(value) = self.get(key) else { return Ok(None) };
        let id = integer(value)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| Self::type_error(key, "a token id (non-negative integer)", value))?;
        Ok(Some(id))
    }

    /// An array of strings; empty when absent.
    fn strings(&self, key: &str) -> Result<Vec<&'a str>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.as_str()),
                    other => Err(Self::type_error(key, "an array of strings", other)),
                })
                .collect(),
            Some(other) => Err(Self::type_error(key, "an array of strings", other)),
        }
    }

    /// An array of integers; empty when absent.
    fn integers(&self, key: &str) -> Result<Vec<i64>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| integer(v).ok_or_else(|| Self::type_error(key, "an array of integers", v)))
                .collect(),
            Some(other) => Err(Self::type_error(key, "an array of integers", other)),
        }
    }
}

fn integer(value: &Value) -> Option<i64> {
    match *value {
        Value::U8(v) => Some(v.into()),
        Value::I8(v) => Some(v.into()),
        Value::U16(v) => Some(v.into()),
        Value::I16(v) => Some(v.into()),
        Value::U32(v) => Some(v.into()),
        Value::I32(v) => Some(v.into()),
        Value::U64(v) => i64::try_from(v).ok(),
        Value::I64(v) => Some(v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_split_at_the_first_inner_space() {
        assert_eq!(split_merge("Ġ t").unwrap(), ("Ġ".into(), "t".into()));
        assert_eq!(split_merge("  x").unwrap(), (" ".into(), "x".into()));
        assert!(split_merge("nospace").is_err());
    }

    #[test]
    fn unknown_pre_tokenizer_names_are_refused_by_name() {
        match PreTokenizerKind::from_gguf_name("tekken") {
            Err(ModelError::Unsupported(msg)) => assert!(msg.contains("`tekken`"), "{msg}"),
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }

    #[test]
    fn every_pre_tokenizer_regex_compiles() {
        for kind in [
            PreTokenizerKind::Gpt2,
            PreTokenizerKind::DigitsThenGpt2,
            PreTokenizerKind::Llama3,
            PreTokenizerKind::Qwen2,
        ] {
            kind.pre_tokenizer().unwrap();
        }
    }
}
