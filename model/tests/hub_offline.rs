//! `hf:ORG/NAME` resolution against a local hub cache with `HF_HUB_OFFLINE=1` (no network here or in CI).
//! One test function, because it sets process environment variables.

use std::path::Path;

use ideator_model::weights::hub;

/// Lays out a cache as huggingface_hub does: refs/<rev> holds a commit, snapshots/<commit>/ the files.
fn make_cache(home: &Path, repo: &str, files: &[(&str, &[u8])]) {
    let repo_dir = home.join("hub").join(format!("models--{}", repo.replace('/', "--")));
    let commit = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs").join("main"), commit).unwrap();
    let snap = repo_dir.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    for (name, data) in files {
        std::fs::write(snap.join(name), data).unwrap();
    }
}

#[test]
fn offline_hub_uses_the_cache_and_explains_what_is_missing() {
    let home = tempfile::tempdir().unwrap();
    std::env::set_var("HF_HOME", home.path());
    std::env::set_var("HF_HUB_OFFLINE", "1");
    make_cache(
        home.path(),
        "acme/tiny",
        &[("config.json", b"{}"), ("tokenizer.json", b"{}"), ("model.safetensors", b"x")],
    );
    let snap = hub::fetch("acme/tiny", "main").unwrap();
    assert!(snap.join("config.json").is_file() && snap.join("model.safetensors").is_file());

    let e = hub::fetch("acme/absent", "main").unwrap_err().to_string();
    assert!(e.contains("acme/absent") && e.contains("HF_HUB_OFFLINE"), "{e}");

    make_cache(home.path(), "acme/noweights", &[("config.json", b"{}"), ("tokenizer.json", b"{}")]);
    let e = hub::fetch("acme/noweights", "main").unwrap_err().to_string();
    assert!(e.contains("model.safetensors"), "{e}");

    // A sharded checkpoint needs every shard named by its index.
    let index =
        br#"{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#;
    make_cache(
        home.path(),
        "acme/sharded",
        &[
            ("config.json", b"{}"),
            ("tokenizer.json", b"{}"),
            ("model.safetensors.index.json", index),
            ("model-00001-of-00002.safetensors", b"x"),
        ],
    );
    let e = hub::fetch("acme/sharded", "main").unwrap_err().to_string();
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
}
