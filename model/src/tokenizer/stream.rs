//! Incremental decoding: the text that each newly sampled token adds, for streaming and stop strings.
//!
//! Decoding token by token and concatenating is wrong in two ways. A byte-level BPE token can hold part of a
//! UTF-8 character (an emoji is often 2-4 tokens), so a lone token decodes to U+FFFD; and some decoders (e.g.
//! SentencePiece's) render a token differently depending on what precedes it. [`StreamDecoder`] therefore
//! decodes a short window of recent ids and returns only what the window adds beyond the text already
//! returned, holding tokens back while the text ends in an unfinished character.

use super::Tokenizer;
use crate::error::Result;

/// The replacement character the decoders emit for bytes that are not (yet) valid UTF-8.
const REPLACEMENT: char = '\u{FFFD}';

/// Turns ids pushed one at a time into text pieces; the pieces concatenated equal
/// `tokenizer.decode(all_ids, skip_special)`, and no piece ends inside a multi-byte character.
///
/// It holds no reference to the tokenizer (pass it to each call), so a batched sampler can keep one per row:
///
/// ```no_run
/// # fn demo(tokenizer: &ideator_model::tokenizer::Tokenizer, sampled: &[u32]) -> ideator_model::Result<()> {
/// let mut stream = tokenizer.stream_decoder(true);
/// let mut text = String::new();
/// for &id in sampled {
///     text.push_str(&stream.push(tokenizer, id)?);
///     if text.contains("[End]") {
///         break;
///     }
/// }
/// text.push_str(&stream.finish(tokenizer)?);
/// # Ok(()) }
/// ```
///
/// A generated text that really ends in U+FFFD stays held back until the next token or [`finish`](Self::finish).
#[derive(Debug, Clone)]
pub struct StreamDecoder {
    skip_special: bool,
    /// Ids whose text was returned already, kept as left context for the next decode.
    context: Vec<u32>,
    /// `decode(context)`, the prefix to strip from the window's text.
    context_text: String,
    /// Ids whose text has not been returned yet.
    pending: Vec<u32>,
}

impl StreamDecoder {
    pub(super) fn new(skip_special: bool) -> Self {
        StreamDecoder { skip_special, context: Vec::new(), context_text: String::new(), pending: Vec::new() }
    }

    /// Adds one id and returns the text it completes: empty while the bytes so far end inside a character (or
    /// the token renders as nothing, like a skipped special token).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String> {
        self.pending.push(id);
        let text = self.decode_window(tokenizer)?;
        if text.len() <= self.context_text.len() || text.ends_with(REPLACEMENT) {
            return Ok(String::new());
        }
        let new_text = self.text_after_context(&text);
        self.context = std::mem::take(&mut self.pending);
        self.context_text = tokenizer.decode(&self.context, self.skip_special)?;
        Ok(new_text)
    }

    /// Returns whatever is still held back (an unfinished character comes out as U+FFFD) and empties the buffer.
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<String> {
        if self.pending.is_empty() {
            return Ok(String::new());
        }
        let text = self.decode_window(tokenizer)?;
        let new_text = self.text_after_context(&text);
        self.context = std::mem::take(&mut self.pending);
        self.context_text = tokenizer.decode(&self.context, self.skip_special)?;
        Ok(new_text)
    }

    /// Whether tokens are held back waiting for the rest of a character.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    fn decode_window(&self, tokenizer: &Tokenizer) -> Result<String> {
        let window: Vec<u32> = self.context.iter().chain(&self.pending).copied().collect();
        tokenizer.decode(&window, self.skip_special)
    }

    /// The part of the window's text beyond the context's. Byte-level decoding always extends the context's
    /// text; should a decoder rewrite it (malformed byte sequences can), return everything after the longest
    /// common prefix rather than fail mid-generation.
    fn text_after_context(&self, text: &str) -> String {
        if let Some(rest) = text.strip_prefix(self.context_text.as_str()) {
            return rest.to_owned();
        }
        let common: usize = text
            .char_indices()
            .zip(self.context_text.chars())
            .take_while(|((_, a), b)| a == b)
            .last()
            .map_or(0, |((i, c), _)| i + c.len_utf8());
        text[common..].to_owned()
    }
}
