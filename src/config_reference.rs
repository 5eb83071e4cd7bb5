//! `CONFIG.md`, the reference of every config key, generated from the config types so that it cannot drift: each
//! file kind's complete config (every default filled in by serde) is serialized and listed section by section.
//! The test below fails when the committed file differs; `IDEATOR_BLESS=1` rewrites it.

use serde::{de::DeserializeOwned, Serialize};

/// One config file kind: its command, the keys it requires, and the optional keys that have no default (shown
/// with a placeholder so that they are listed).
struct Kind {
    command: &'static str,
    required: &'static str,
    optional_without_default: &'static str,
}

/// A key's row: dotted name, default (or "required" / "none"), TOML type.
fn rows(value: &toml::Value, prefix: &str, required: &toml::Value, no_default: &toml::Value, out: &mut Vec<String>) {
    let toml::Value::Table(t) = value else { return };
    let mut tables = Vec::new();
    let mut lines = Vec::new();
    for (k, v) in t {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        let sub = |x: &toml::Value| x.get(k.as_str()).cloned().unwrap_or(toml::Value::Table(Default::default()));
        match v {
            toml::Value::Table(_) => tables.push((key, v, sub(required), sub(no_default))),
            _ => {
                let default = if required.get(k.as_str()).is_some() {
                    "required".to_string()
                } else if no_default.get(k.as_str()).is_some() {
                    "none".to_string()
                } else {
                    format!("`{v}`")
                };
                lines.push(format!("| `{k}` | {default} | {} |", v.type_str()));
            }
        }
    }
    if !lines.is_empty() {
        let title = if prefix.is_empty() { "Top-level keys".to_string() } else { format!("`[{prefix}]`") };
        out.push(format!("\n### {title}\n\n| key | default | type |\n| --- | --- | --- |"));
        out.extend(lines);
    }
    for (key, v, req, nd) in tables {
        rows(v, &key, &req, &nd, out);
    }
}

/// `b`'s keys added to `a`, tables merged key by key.
fn merge(a: &mut toml::Value, b: &toml::Value) {
    match (a, b) {
        (toml::Value::Table(a), toml::Value::Table(b)) => {
            for (k, v) in b {
                match a.get_mut(k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        a.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (a, b) => *a = b.clone(),
    }
}

/// The complete config of `T` for `text` plus `more` (every default filled in), as TOML.
fn complete<T: Serialize + DeserializeOwned>(text: &toml::Value, more: &toml::Value) -> toml::Value {
    let mut merged = text.clone();
    merge(&mut merged, more);
    let parsed: T = merged.try_into().expect("the reference's own config parses");
    toml::Value::try_from(&parsed).expect("configs serialize")
}

/// A variant of a file kind listed after it: its title, the TOML that selects it, and its optional keys without
/// a default (shown with a placeholder so that they are listed).
type Variant<'a> = (&'a str, &'a str, &'a str);

fn section<T: Serialize + DeserializeOwned>(kind: &Kind, extra: &[Variant]) -> String {
    let required: toml::Value = toml::from_str(kind.required).expect("valid TOML");
    let no_default: toml::Value = toml::from_str(kind.optional_without_default).expect("valid TOML");
    let full = complete::<T>(&required, &no_default);
    let mut out = vec![format!("\n## `ideator {} --config FILE`", kind.command)];
    rows(&full, "", &required, &no_default, &mut out);
    for (title, variant, variant_no_default) in extra {
        out.push(format!("\n{title}"));
        let v: toml::Value = toml::from_str(variant).expect("valid TOML");
        let nd: toml::Value = toml::from_str(variant_no_default).expect("valid TOML");
        let mut selected = v.clone();
        merge(&mut selected, &nd);
        let full = complete::<T>(&required, &selected);
        let (name, _) = v.as_table().and_then(|t| t.iter().next()).expect("one section");
        let sub = full.get(name.as_str()).cloned().expect("the section is serialized");
        let mut wrapped = toml::Table::new();
        wrapped.insert(name.clone(), sub);
        let empty = toml::Value::Table(Default::default());
        rows(&toml::Value::Table(wrapped), "", &empty, &nd, &mut out);
    }
    out.join("\n") + "\n"
}

/// The local backend with its optional keys (a `[backend]` table needs its `kind`, so they are listed apart).
const LOCAL_BACKEND: Variant = (
    "With `backend.kind = \"local\"` (the default) the backend keys are:",
    "[backend]\nkind = \"local\"\n",
    "[backend]\nmemory_per_run_gb = 1.0\nthreads_per_run = 1\n",
);

/// The experiment's file: its top-level keys and tables, then one `[[arms]]` table per arm kind.
fn experiment_section() -> String {
    use crate::commands::experiment::config::ExperimentConfig;
    let kind = Kind {
        command: "experiment",
        required: "env = \"toy\"\nexecutions = 8\nseeds = [1]\n\
                   [[arms]]\nkind = \"best_of_n\"\nname = \"frozen\"\nbatch = 8\n\
                   [[arms]]\nkind = \"evolve\"\nname = \"evolution\"\nideas_per_epoch = 4\n\
                   [[arms]]\nkind = \"grpo\"\nname = \"grpo\"\n",
        optional_without_default: "env_config = \"env.toml\"\ntime_limit_s = 60.0\ncheckpoint = \"PATH\"\n\
                                   run_dir = \"PATH\"\n",
    };
    let mut out = section::<ExperimentConfig>(&kind, &[LOCAL_BACKEND]);
    out += "\nEach `[[arms]]` table has a `kind` and a `name` (required), and the keys of its kind; the arm's \
            `[arms.grpo]` is a whole `[grpo]` table (see `ideator train`).\n";
    let required: toml::Value = toml::from_str(kind.required).expect("valid TOML");
    let full = complete::<ExperimentConfig>(&required, &toml::Value::Table(Default::default()));
    let arms = full.get("arms").and_then(|a| a.as_array()).expect("the arms are serialized");
    let empty = toml::Value::Table(Default::default());
    let required_arms = required.get("arms").and_then(|a| a.as_array()).expect("the required arms");
    for (arm, arm_required) in arms.iter().zip(required_arms) {
        let arm_kind = arm.get("kind").and_then(|k| k.as_str()).expect("tagged by kind");
        let mut lines = Vec::new();
        let mut shallow = arm.as_table().expect("a table").clone();
        shallow.remove("grpo"); // listed under `ideator train`'s `[grpo]`
        rows(&toml::Value::Table(shallow), "arms", arm_required, &empty, &mut lines);
        let body =
            lines.join("\n").replacen("### `[arms]`", &format!("### `[[arms]]` with `kind = \"{arm_kind}\"`"), 1);
        out += &body;
        out += "\n";
    }
    out
}

/// The whole reference.
pub(crate) fn reference() -> String {
    use crate::commands::{evolve::EvolveFile, sft::SftFile, train::TrainFile};
    let train = Kind {
        command: "train",
        required: "[env]\nname = \"toy\"\n",
        optional_without_default: "[init]\ncheckpoint = \"PATH\"\n[run]\ndir = \"PATH\"\n[env]\nscale = \"tiny\"\n\
                                   config = \"env.toml\"\ntime_limit_s = 60.0\n[grpo]\nrollout_is_threshold = 2.0\n[grpo.max_k]\nk_final = 1\n",
    };
    let sft = Kind {
        command: "sft",
        required: "[sft]\ndata = \"examples.jsonl\"\n",
        optional_without_default: "[run]\ndir = \"PATH\"\n",
    };
    let evolve = Kind {
        command: "evolve",
        required: "[env]\nname = \"toy\"\n",
        optional_without_default: "[init]\ncheckpoint = \"PATH\"\n[run]\ndir = \"PATH\"\n[env]\nscale = \"tiny\"\n\
                                   config = \"env.toml\"\ntime_limit_s = 60.0\n",
    };
    let local = LOCAL_BACKEND;
    let slurm = (
        "With `backend.kind = \"slurm\"` the backend keys are:",
        "[backend]\nkind = \"slurm\"\n",
        "[backend]\npartition = \"P\"\naccount = \"A\"\nqos = \"Q\"\nmem = \"16G\"\n",
    );
    let full = (
        "With `train.mode = \"full\"` (every weight trained) there is no `[train.lora]`:",
        "[train]\nmode = \"full\"\n",
        "",
    );
    let mut out = String::from(
        "# Config reference\n\nGenerated from the config types (`src/config_reference.rs`; a test fails when this file \
         and the types disagree, and `IDEATOR_BLESS=1 cargo test --release -p ideator --bin ideator \
         config_reference` rewrites it). Every key may be left out except those marked required; the default is \
         shown, \"none\" when unset means off or derived (see the key's doc in the code). Paths are relative to the \
         config file. Floats must be finite: `nan` and `inf` are refused with the key named.\n",
    );
    out += &section::<TrainFile>(&train, &[local, slurm, full]);
    out += &section::<SftFile>(&sft, &[full]);
    out += &section::<EvolveFile>(&evolve, &[local, slurm]);
    out += &experiment_section();
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn config_reference_matches_the_committed_file() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("CONFIG.md");
        let want = super::reference();
        if std::env::var_os("IDEATOR_BLESS").is_some() {
            std::fs::write(&path, &want).unwrap();
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "CONFIG.md is out of date with the config types; regenerate it with IDEATOR_BLESS=1 cargo test --release \
             -p ideator --bin ideator config_reference"
        );
    }
}
