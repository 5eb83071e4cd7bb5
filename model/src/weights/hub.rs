//! Models from the Hugging Face hub through `hf-hub`: files land in (or come from) the standard cache
//! (`$HF_HOME/hub`), and `HF_HUB_OFFLINE=1` restricts us to that cache, as the Python libraries do.

use std::path::PathBuf;

use hf_hub::{Cache, Repo, RepoType};

use crate::{ModelError, Result};

/// Files a model folder needs; the optional ones are fetched when present upstream.
const REQUIRED: [&str; 2] = ["config.json", "tokenizer.json"];
const OPTIONAL: [&str; 2] = ["tokenizer_config.json", "generation_config.json"];

/// Returns the local path of a repository file, `None` if the repository has no such file.
type FileGetter<'a> = dyn Fn(&str) -> Result<Option<PathBuf>> + 'a;

pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

/// Makes the model's files available locally and returns the snapshot folder that holds them.
pub fn fetch(repo: &str, revision: &str) -> Result<PathBuf> {
    let hub_repo = Repo::with_revision(repo.to_string(), RepoType::Model, revision.to_string());
    let getter: Box<FileGetter<'_>> = if offline() {
        let cache = Cache::from_env().repo(hub_repo);
        Box::new(move |file: &str| Ok(cache.get(file)))
    } else {
        let api = hf_hub::api::sync::ApiBuilder::from_env()
            .with_progress(true)
            .build()
            .map_err(|e| ModelError::Hub(format!("cannot start the hub client: {e}")))?
            .repo(hub_repo);
        Box::new(move |file: &str| match api.get(file) {
            Ok(p) => Ok(Some(p)),
            Err(hf_hub::api::sync::ApiError::RequestError(e)) if e.to_string().contains("404") => Ok(None),
            Err(e) => Err(ModelError::Hub(format!("{repo}: cannot download {file}: {e}"))),
        })
    };
    let where_ = if offline() { "in the local hub cache (HF_HUB_OFFLINE is set)" } else { "on the hub" };
    let mut snapshot = None;
    for file in REQUIRED {
        let p = getter(file)?
            .ok_or_else(|| ModelError::Hub(format!("hf:{repo}@{revision}: {file} not found {where_}")))?;
        snapshot = p.parent().map(PathBuf::from);
    }
    for file in OPTIONAL {
        getter(file)?;
    }
    let weights_single = getter("model.safetensors")?;
    if weights_single.is_none() {
        let index = getter("model.safetensors.index.json")?.ok_or_else(|| {
            ModelError::Hub(format!(
                "hf:{repo}@{revision}: neither model.safetensors nor model.safetensors.index.json found {where_}"
            ))
        })?;
        for shard in super::safetensors_dir::shards_from_index(&index)? {
            let name = shard.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            getter(&name)?
                .ok_or_else(|| ModelError::Hub(format!("hf:{repo}@{revision}: shard {name} not found {where_}")))?;
        }
    }
    snapshot.ok_or_else(|| ModelError::Hub(format!("hf:{repo}@{revision}: no snapshot folder")))
}
