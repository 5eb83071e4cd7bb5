//! Reading a tokenizer from a Hugging Face model folder.
//!
//! `tokenizer.json` holds the pipeline; the special-token *roles* (which token is BOS/EOS/PAD, whether BOS is
//! added) and the chat template live in `tokenizer_config.json` (or `chat_template.jinja` next to it, which newer
//! transformers versions write instead); `generation_config.json` / `config.json` may list further ids that end
//! generation (e.g. Llama 3's `[128001, 128008, 128009]`).

use std::path::Path;

use serde_json::Value;

use super::Parts;
use crate::error::{ModelError, Result};

/// Reads the folder's tokenizer files; see [`super::Tokenizer::from_folder`].
pub(super) fn parts_from_folder(dir: &Path) -> Result<Parts> {
    let tokenizer_path = dir.join("tokenizer.json");
    if !tokenizer_path.is_file() {
        return Err(ModelError::file(
            &tokenizer_path,
            "missing: a model folder needs tokenizer.json (the Hugging Face fast-tokenizer file)",
        ));
    }
    let bytes =
        std::fs::read(&tokenizer_path).map_err(|e| ModelError::file(&tokenizer_path, format!("cannot read: {e}")))?;
    let inner = tokenizers::Tokenizer::from_bytes(&bytes)
        .map_err(|e| ModelError::file(&tokenizer_path, format!("not a valid tokenizer.json: {e}")))?;

    let config_path = dir.join("tokenizer_config.json");
    let config = read_optional_json(&config_path)?.unwrap_or(Value::Null);
    let token_id = |key: &str| -> Result<Option<u32>> {
        match token_content(&config, key) {
            None => Ok(None),
            Some(content) => inner.token_to_id(content).map(Some).ok_or_else(|| {
                ModelError::file(&config_path, format!("{key} {content:?} is not in tokenizer.json's vocabulary"))
            }),
        }
    };
    let bos_id = token_id("bos_token")?;
    let eos_id = token_id("eos_token")?;
    let pad_id = token_id("pad_token")?;

    let add_bos = match config.get("add_bos_token") {
        Some(Value::Bool(b)) => *b,
        // Without the flag, the pipeline itself decides: a post-processor that puts BOS in front of every
        // sequence (Llama 3's TemplateProcessing) means the model expects it.
        _ => match bos_id {
            Some(bos) => {
                let probe = inner
                    .encode_fast("a", true)
                    .map_err(|e| ModelError::file(&tokenizer_path, format!("cannot encode with it: {e}")))?;
                probe.get_ids().first() == Some(&bos)
            }
            None => false,
        },
    };

    let jinja_path = dir.join("chat_template.jinja");
    let chat_template = if jinja_path.is_file() {
        Some(
            std::fs::read_to_string(&jinja_path)
                .map_err(|e| ModelError::file(&jinja_path, format!("cannot read: {e}")))?,
        )
    } else {
        chat_template_from_config(&config).map_err(|message| ModelError::file(&config_path, message))?
    };

    let mut more_eos_ids = Vec::new();
    for name in ["generation_config.json", "config.json"] {
        let path = dir.join(name);
        if let Some(json) = read_optional_json(&path)? {
            more_eos_ids.extend(eos_ids_of(&json).map_err(|message| ModelError::file(&path, message))?);
        }
    }

    Ok(Parts { inner, bos_id, eos_id, more_eos_ids, pad_id, add_bos, chat_template })
}

/// The parsed JSON at `path`, `None` when the file does not exist; unreadable or malformed is an error.
fn read_optional_json(path: &Path) -> Result<Option<Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::file(path, format!("cannot read: {e}")))?;
    serde_json::from_str(&text).map(Some).map_err(|e| ModelError::file(path, format!("not valid JSON: {e}")))
}

/// A special token in `tokenizer_config.json`: a plain string, or an `AddedToken` object with `content`.
fn token_content<'a>(config: &'a Value, key: &str) -> Option<&'a str> {
    match config.get(key)? {
        Value::String(s) => Some(s),
        Value::Object(object) => object.get("content")?.as_str(),
        _ => None,
    }
}

/// `chat_template` as a string, or a list of `{name, template}` entries of which `default` is the chat one.
fn chat_template_from_config(config: &Value) -> std::result::Result<Option<String>, String> {
    match config.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(entries)) => {
            let default = entries.iter().find(|e| e.get("name").and_then(Value::as_str) == Some("default"));
            match default.and_then(|e| e.get("template")).and_then(Value::as_str) {
                Some(template) => Ok(Some(template.to_owned())),
                None => Err("chat_template is a list of named templates without a `default` one".into()),
            }
        }
        Some(_) => Err("chat_template must be a string or a list of {name, template}".into()),
    }
}

/// `eos_token_id` as one id or a list of ids (absent or null: none).
fn eos_ids_of(json: &Value) -> std::result::Result<Vec<u32>, String> {
    let as_id = |v: &Value| {
        v.as_u64().and_then(|id| u32::try_from(id).ok()).ok_or_else(|| format!("eos_token_id {v} is not a token id"))
    };
    match json.get("eos_token_id") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(ids)) => ids.iter().map(as_id).collect(),
        Some(id) => Ok(vec![as_id(id)?]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn special_tokens_may_be_strings_or_added_token_objects() {
        let config =
            json!({"bos_token": "<s>", "eos_token": {"content": "</s>", "lstrip": false}, "pad_token": null});
        assert_eq!(token_content(&config, "bos_token"), Some("<s>"));
        assert_eq!(token_content(&config, "eos_token"), Some("</s>"));
        assert_eq!(token_content(&config, "pad_token"), None);
        assert_eq!(token_content(&config, "unk_token"), None);
    }

    #[test]
    fn chat_template_lists_use_the_default_entry() {
        let listed =
            json!({"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]});
        assert_eq!(chat_template_from_config(&listed).unwrap().as_deref(), Some("D"));
        assert!(chat_template_from_config(&json!({"chat_template": [{"name": "rag", "template": "R"}]})).is_err());
        assert_eq!(chat_template_from_config(&json!({})).unwrap(), None);
    }

    #[test]
    fn eos_ids_may_be_one_id_or_a_list() {
        assert_eq!(eos_ids_of(&json!({"eos_token_id": 2})).unwrap(), vec![2]);
        assert_eq!(eos_ids_of(&json!({"eos_token_id": [1, 7]})).unwrap(), vec![1, 7]);
        assert_eq!(eos_ids_of(&json!({})).unwrap(), Vec::<u32>::new());
        assert!(eos_ids_of(&json!({"eos_token_id": "x"})).is_err());
    }
}
