//! The Brown corpus as plain text bytes: tags stripped, tokens re-joined as ordinary English, and a deterministic
//! train/validation split by file (every 20th file, in name order, is held out).

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

/// The held-out share: file `i` (in sorted name order) is validation when `i % VAL_EVERY == 0`.
pub(crate) const VAL_EVERY: usize = 20;

/// Training and validation text as bytes.
#[derive(Debug)]
pub struct Corpus {
    pub train: Vec<u8>,
    pub val: Vec<u8>,
}

/// Loads the corpus from a Brown folder (files `ca01` ... `cr09`), memoised per folder for this process.
pub fn load(dir: &Path) -> Result<Arc<Corpus>, String> {
    type Cache = Mutex<Vec<(std::path::PathBuf, Arc<Corpus>)>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(Vec::new()));
    let mut guard = cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, c)) = guard.iter().find(|(d, _)| d == dir) {
        return Ok(c.clone());
    }
    let corpus = Arc::new(read(dir)?);
    guard.push((dir.to_path_buf(), corpus.clone()));
    Ok(corpus)
}

fn read(dir: &Path) -> Result<Corpus, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        format!("cannot read the Brown corpus folder: {e}; {}", ideator_model::assets::missing_asset_hint(dir))
    })?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| is_brown_file(n))
        .collect();
    names.sort();
    if names.len() < 2 * VAL_EVERY {
        return Err(format!(
            "{} holds {} Brown files (ca01 ... cr09); expected 500. {}",
            dir.display(),
            names.len(),
            ideator_model::assets::missing_asset_hint(dir)
        ));
    }
    let mut corpus = Corpus { train: Vec::new(), val: Vec::new() };
    for (i, name) in names.iter().enumerate() {
        let raw = std::fs::read(dir.join(name)).map_err(|e| format!("cannot read {name}: {e}"))?;
        let text = detokenize(&String::from_utf8_lossy(&raw));
        let out = if i % VAL_EVERY == 0 { &mut corpus.val } else { &mut corpus.train };
        out.extend_from_slice(text.as_bytes());
        out.push(b'\n');
    }
    Ok(corpus)
}

/// Brown file names: `c`, a genre letter `a`-`r`, two digits.
fn is_brown_file(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() == 4 && b[0] == b'c' && b[1].is_ascii_lowercase() && b[2].is_ascii_digit() && b[3].is_ascii_digit()
}

/// Tagged Brown text (`The/at jury/nn said/vbd ./.`) to plain text (`The jury said.`), one sentence per line.
pub(crate) fn detokenize(tagged: &str) -> String {
    let mut out = String::with_capacity(tagged.len() / 2);
    for line in tagged.lines() {
        let words: Vec<&str> = line.split_whitespace().map(strip_tag).filter(|w| !w.is_empty()).collect();
        if words.is_empty() {
            continue;
        }
        let mut sentence = String::new();
        let mut glue_next = true; // no space before the first word
        for w in words {
            let w = match w {
                "``" | "''" => "\"",
                other => other,
            };
            let opening = matches!(w, "(" | "[") || (w == "\"" && is_opening_quote(&sentence));
            let closing = matches!(w, "." | "," | ";" | ":" | "?" | "!" | ")" | "]" | "'" | "n't" | "'s")
                || (w == "\"" && !opening);
            if !glue_next && !closing {
                sentence.push(' ');
            }
            sentence.push_str(w);
            glue_next = opening;
        }
        out.push_str(&sentence);
        out.push('\n');
    }
    out
}

/// A double quote opens when the quotes so far in the sentence are balanced.
fn is_opening_quote(sentence: &str) -> bool {
    sentence.matches('"').count() % 2 != 1
}

/// `word/tag` -> `word` (the last slash separates the tag; words may contain slashes themselves).
fn strip_tag(token: &str) -> &str {
    match token.rsplit_once('/') {
        Some((word, _tag)) => word,
        None => token,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detokenize_strips_tags_and_joins_punctuation() {
        let tagged = "\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, (/( 1/2/cd )/) ./.\n\n";
        assert_eq!(detokenize(tagged), "The jury said \"no evidence\", (1/2).\n");
    }

    #[test]
    fn brown_file_names() {
        assert!(is_brown_file("ca01"));
        assert!(is_brown_file("cr09"));
        assert!(!is_brown_file("README"));
        assert!(!is_brown_file("ca1"));
    }
}
