//! Where the embedded default assets live (fetched by `scripts/fetch-assets.sh`, never committed).
//!
//! Looked up in order: `$IDEATOR_ASSETS`, `./assets` in the working directory, then the `assets/` folder of the
//! source tree this binary was built from (so tests and a freshly built binary find them without set-up).

use std::path::{Path, PathBuf};

/// File name of the default ideator inside `assets/smollm2/`.
pub(crate) const DEFAULT_GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The assets folder, whether or not it has been populated yet.
pub(crate) fn assets_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("IDEATOR_ASSETS") {
        return PathBuf::from(dir);
    }
    let local = PathBuf::from("assets");
    if local.join("smollm2").is_dir() {
        return local;
    }
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("assets");
    // Canonical when it exists, so messages show /repo/assets rather than /repo/model/../assets.
    built_from.canonicalize().unwrap_or(built_from)
}

/// The default ideator GGUF (SmolLM2-135M-Instruct, Q4_1).
pub fn default_gguf_path() -> PathBuf {
    assets_dir().join("smollm2").join(DEFAULT_GGUF)
}

/// The sentence embedder folder (all-MiniLM-L6-v2: `model.safetensors`, `tokenizer.json`, `config.json`).
pub fn minilm_dir() -> PathBuf {
    assets_dir().join("minilm")
}

/// The Brown corpus folder (tagged text files `ca01` ... `cr09`).
pub fn brown_dir() -> PathBuf {
    assets_dir().join("brown")
}

/// A clear message for a missing asset: what is missing and the command that fetches it.
pub fn missing_asset_hint(path: &Path) -> String {
    format!(
        "{} does not exist; run scripts/fetch-assets.sh to fetch the default assets (or set IDEATOR_ASSETS)",
        path.display()
    )
}
