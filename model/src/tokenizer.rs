//! The tokenizer: text <-> token ids, the special tokens a sampler needs (BOS, end-of-sequence set, padding),
//! the chat template, and incremental decoding for stop strings.
//!
//! Two sources:
//! - a GGUF file's metadata ([`Tokenizer::from_gguf`]; see [`gguf`] for the pre-tokenizers we rebuild and why
//!   we do not use candle's `TokenizerFromGguf`),
//! - a model folder with `tokenizer.json` and `tokenizer_config.json` ([`Tokenizer::from_folder`]).
//!
//! Both end as a `tokenizers::Tokenizer` plus the ids and flags that `tokenizer.json` alone does not carry.
//! BOS is never added by the inner tokenizer's post-processor: [`Tokenizer::encode`] adds it explicitly, so the
//! caller always knows whether the sequence starts with one.

mod folder;
pub mod gguf;
mod stream;

use std::path::Path;

use candle_core::quantized::gguf_file;

use crate::chat_template::{ChatMessage, ChatTemplate};
use crate::error::{ModelError, Result};

pub use stream::StreamDecoder;

/// Special tokens that end a turn or a document in the vocabularies we support. A generated one ends
/// sampling like the declared EOS does (ChatML's `<|im_end|>`, Llama 3's `<|eot_id|>` / `<|eom_id|>` /
/// `<|end_of_text|>`, GPT-2-style `<|endoftext|>`), but only where the model defines it as a special token.
const END_OF_TURN_TOKENS: [&str; 5] = ["<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|endoftext|>"];

/// A tokenizer with its special-token ids and optional chat template.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_id: Option<u32>,
    eos_ids: Vec<u32>,
    pad_id: Option<u32>,
    add_bos: bool,
    vocab_size: usize,
    chat_template: Option<ChatTemplate>,
}

/// What a source (GGUF metadata, a folder) provides; [`Tokenizer::assemble`] derives the rest.
struct Parts {
    inner: tokenizers::Tokenizer,
    bos_id: Option<u32>,
    /// The declared end-of-sequence token (its text is the template's `eos_token`).
    eos_id: Option<u32>,
    /// Further ids that end generation (GGUF `eot`/`eom`, `generation_config.json`'s list).
    more_eos_ids: Vec<u32>,
    pad_id: Option<u32>,
    add_bos: bool,
    chat_template: Option<String>,
}

impl Tokenizer {
    /// Builds the tokenizer a GGUF file describes (`tokenizer.ggml.*` metadata and `tokenizer.chat_template`).
    ///
    /// Only byte-level BPE vocabularies (`tokenizer.ggml.model = gpt2`) are implemented; an unknown model type
    /// or pre-tokenizer (`tokenizer.ggml.pre`) is a [`ModelError::Unsupported`] naming it.
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
        Self::assemble(gguf::parts_from_gguf(content)?)
    }

    /// Reads the metadata of the GGUF file at `path` (not its tensors) and builds its tokenizer.
    pub fn from_gguf_file(path: &Path) -> Result<Self> {
        let mut file = std::fs::File::open(path).map_err(|e| ModelError::file(path, format!("cannot open: {e}")))?;
        let content = gguf_file::Content::read(&mut file)
            .map_err(|e| ModelError::file(path, format!("not a readable GGUF file: {e}")))?;
        Self::from_gguf(&content)
    }

    /// Builds the tokenizer of a model folder: `tokenizer.json` (required), `tokenizer_config.json` (chat
    /// template, BOS/EOS/PAD tokens, `add_bos_token`), `chat_template.jinja` if present (it takes precedence, as
    /// in transformers), and the EOS ids of `generation_config.json` / `config.json` if present.
    ///
    /// A missing `tokenizer.json`, or any of these files unreadable or malformed, is a [`ModelError::File`]
    /// naming the file and the problem.
    pub fn from_folder(dir: &Path) -> Result<Self> {
        Self::assemble(folder::parts_from_folder(dir)?)
    }

    fn assemble(parts: Parts) -> Result<Self> {
        let Parts { inner, bos_id, eos_id, more_eos_ids, pad_id, add_bos, chat_template } = parts;
        let vocab_size = inner.get_vocab_size(true);
        let check = |what: &str, id: Option<u32>| match id {
            Some(id) if inner.id_to_token(id).is_none() => Err(ModelError::Tokenizer(format!(
                "the {what} token id {id} is not in the vocabulary ({vocab_size} tokens)"
            ))),
            _ => Ok(()),
        };
        check("BOS", bos_id)?;
        check("EOS", eos_id)?;
        check("padding", pad_id)?;
        for &id in &more_eos_ids {
            check("end-of-sequence", Some(id))?;
        }
        if add_bos && bos_id.is_none() {
            return Err(ModelError::Tokenizer(
                "the tokenizer asks for a BOS token to be added but defines none".into(),
            ));
        }

        let added = inner.get_added_vocabulary();
        let named_end_tokens = END_OF_TURN_TOKENS
            .iter()
            .filter(|name| added.is_special_token(name))
            .filter_map(|name| inner.token_to_id(name));
        let mut eos_ids: Vec<u32> = Vec::new();
        for id in eos_id.into_iter().chain(more_eos_ids).chain(named_end_tokens) {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }

        let bos_token = bos_id.and_then(|id| inner.id_to_token(id));
        let eos_token = eos_id.and_then(|id| inner.id_to_token(id));
        let chat_template = chat_template
            .map(|source| ChatTemplate::new(source, bos_token.as_deref(), eos_token.as_deref()))
            .transpose()?;
        Ok(Tokenizer { inner, bos_id, eos_ids, pad_id, add_bos, vocab_size, chat_template })
    }

    /// Token ids of `text`, with the BOS id in front when `add_bos` is true. Special tokens written in the text
    /// (e.g. `<|im_start|>`) become their ids, as in transformers. A byte the vocabulary has no token for is
    /// dropped, as transformers drops it (SmolLM2 lacks e.g. the control bytes 0x04 and 0x06), so such text does
    /// not survive `decode(encode(text))`.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let encoding = self.inner.encode_fast(text, false).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let ids = encoding.get_ids();
        let bos = if add_bos {
            Some(self.bos_id.ok_or_else(|| {
                ModelError::Invalid("a BOS token was requested but this tokenizer defines none".into())
            })?)
        } else {
            None
        };
        Ok(bos.into_iter().chain(ids.iter().copied()).collect())
    }

    /// The text of `ids`; special tokens are left out when `skip_special` is true. An id outside the vocabulary
    /// is an error (the inner tokenizer would silently drop it). Bytes that do not form valid UTF-8 (a
    /// character cut between tokens) come out as U+FFFD; see [`StreamDecoder`] for decoding token by token.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&id| self.inner.id_to_token(id).is_none()) {
            return Err(ModelError::Invalid(format!(
                "token id {bad} is not in the vocabulary ({} tokens)",
                self.vocab_size
            )));
        }
        self.inner.decode(ids, skip_special).map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    /// A decoder that turns ids pushed one at a time into text pieces without cutting a UTF-8 character.
    pub fn stream_decoder(&self, skip_special: bool) -> StreamDecoder {
        StreamDecoder::new(skip_special)
    }

    /// The id of a token spelled as in the vocabulary (byte-level spelling: `Ġthe`, or `<|im_end|>`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The vocabulary spelling of `id`.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The beginning-of-sequence id, if the model has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// Every id that ends generation: the declared EOS first, then end-of-turn tokens (e.g. `<|im_end|>`,
    /// `<|eot_id|>`) the model defines as special. Empty only for a tokenizer that declares none.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Whether `id` ends generation.
    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_ids.contains(&id)
    }

    /// The padding id the model declares, if any (callers batching without one can pad with an EOS id, since
    /// padded positions are masked).
    pub fn pad_id(&self) -> Option<u32> {
        self.pad_id
    }

    /// Number of token ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Whether the model expects a BOS token in front of plain text (false for SmolLM2).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// The model's chat template, if it ships one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// Renders `messages` with the model's chat template. A model without a template, or a template that fails,
    /// is a [`ModelError::ChatTemplate`].
    pub fn apply_chat_template(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let template = self.chat_template.as_ref().ok_or_else(|| {
            ModelError::ChatTemplate(
                "this model has no chat template (tokenizer.chat_template / tokenizer_config.json); \
                 pass plain text instead"
                    .into(),
            )
        })?;
        template.render(messages, add_generation_prompt)
    }

    /// Renders `messages` and tokenizes the result without adding BOS: templates that want one write
    /// `bos_token` themselves, as transformers' `apply_chat_template(tokenize=True)` assumes.
    pub fn encode_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<Vec<u32>> {
        self.encode(&self.apply_chat_template(messages, add_generation_prompt)?, false)
    }

    /// The underlying `tokenizers` pipeline (e.g. to save it as `tokenizer.json`).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}
