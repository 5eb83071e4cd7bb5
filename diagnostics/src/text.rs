//! Tokenisation shared by the text diversity metrics.
//!
//! Lower-cased text is split into words (maximal runs of alphanumeric characters and `_`) and punctuation (every
//! other non-whitespace character is a token of its own); whitespace only separates. For ASCII text this is the
//! Python regex `\w+|[^\w\s]` on `text.lower()`, which the reference scripts use. Lower-casing makes "AdamW" and
//! "adamw" the same word: we measure whether ideas repeat, not how they are capitalised. Punctuation counts as
//! tokens because in `key = value` lines it is part of the idea's structure.

/// The tokens of one idea, as described in the module documentation.
pub fn tokenize(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut word = String::new();
    for c in text.chars().flat_map(char::to_lowercase) {
        if c.is_alphanumeric() || c == '_' {
            word.push(c);
            continue;
        }
        if !word.is_empty() {
            tokens.push(std::mem::take(&mut word));
        }
        if !c.is_whitespace() {
            tokens.push(c.to_string());
        }
    }
    if !word.is_empty() {
        tokens.push(word);
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_words_and_punctuation() {
        assert_eq!(
            tokenize("Use AdamW: lr = 3e-4,\n  warmup_steps=100!"),
            ["use", "adamw", ":", "lr", "=", "3e", "-", "4", ",", "warmup_steps", "=", "100", "!"]
        );
        assert!(tokenize(" \t\n").is_empty());
        assert_eq!(tokenize("Ünïcode wörds"), ["ünïcode", "wörds"]);
    }
}
