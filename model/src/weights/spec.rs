//! What the user names with `--model`: a `.gguf` file, a Hugging Face model folder, or `hf:ORG/NAME[@REVISION]`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{assets, ModelError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum ModelSpec {
    Gguf(PathBuf),
    Folder(PathBuf),
    Hub { repo: String, revision: String },
}

impl ModelSpec {
    /// The embedded default: SmolLM2-135M-Instruct from the fetched assets.
    pub fn default_model() -> Self {
        ModelSpec::Gguf(assets::default_gguf_path())
    }
}

impl FromStr for ModelSpec {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = s.strip_prefix("hf:") {
            let (repo, revision) = match rest.split_once('@') {
                Some((r, rev)) => (r, rev),
                None => (rest, "main"),
            };
            let parts: Vec<&str> = repo.split('/').collect();
            if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) || revision.is_empty() {
                return Err(ModelError::Invalid(format!(
                    "'{s}' is not a hub model id; write hf:ORG/NAME or hf:ORG/NAME@REVISION"
                )));
            }
            return Ok(ModelSpec::Hub { repo: repo.to_string(), revision: revision.to_string() });
        }
        let path = Path::new(s);
        if path.is_dir() {
            return Ok(ModelSpec::Folder(path.to_path_buf()));
        }
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
            if !path.is_file() {
                let msg = if path == assets::default_gguf_path() {
                    assets::missing_asset_hint(path)
                } else {
                    format!("{s} does not exist")
                };
                return Err(ModelError::file(path, msg));
            }
            return Ok(ModelSpec::Gguf(path.to_path_buf()));
        }
        if path.exists() {
            return Err(ModelError::file(
                path,
                "is neither a .gguf file nor a folder with config.json and *.safetensors",
            ));
        }
        Err(ModelError::Invalid(format!("model '{s}' not found: give a .gguf file, a model folder, or hf:ORG/NAME")))
    }
}

impl fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSpec::Gguf(p) | ModelSpec::Folder(p) => write!(f, "{}", p.display()),
            ModelSpec::Hub { repo, revision } if revision == "main" => write!(f, "hf:{repo}"),
            ModelSpec::Hub { repo, revision } => write!(f, "hf:{repo}@{revision}"),
        }
    }
}

impl From<ModelSpec> for String {
    fn from(s: ModelSpec) -> String {
        s.to_string()
    }
}

impl TryFrom<String> for ModelSpec {
    type Error = ModelError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hub_ids() {
        assert_eq!(
            "hf:HuggingFaceTB/SmolLM2-135M-Instruct".parse::<ModelSpec>().unwrap(),
            ModelSpec::Hub { repo: "HuggingFaceTB/SmolLM2-135M-Instruct".into(), revision: "main".into() }
        );
        assert_eq!(
            "hf:a/b@v1".parse::<ModelSpec>().unwrap(),
            ModelSpec::Hub { repo: "a/b".into(), revision: "v1".into() }
        );
        for bad in ["hf:", "hf:a", "hf:a/b/c", "hf:/b", "hf:a/b@"] {
            assert!(bad.parse::<ModelSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn missing_paths_are_clear() {
        let e = "/nonexistent/model.gguf".parse::<ModelSpec>().unwrap_err().to_string();
        assert!(e.contains("/nonexistent/model.gguf") && e.contains("does not exist"), "{e}");
        let e = "nothing-here".parse::<ModelSpec>().unwrap_err().to_string();
        assert!(e.contains("hf:ORG/NAME"), "{e}");
    }
}
