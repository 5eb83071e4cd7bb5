//! Applying an idea's unified diff to a copy of a codebase: split a multi-file diff into per-file patches, check
//! every path against the editable whitelist and the protected list, and apply each patch with `diffy` (exact
//! context, no fuzz; a hunk whose line numbers are off is still found near its stated position).

use crate::knobs::clip;
use std::collections::BTreeSet;
use std::path::{Component, Path};

/// Why a diff could not be applied. Every variant names the file and what to do, because the message goes back to
/// the ideator (and to the implementer model for a repair).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum PatchError {
    #[error("[Code Changes] holds no unified diff: write `--- a/FILE`, `+++ b/FILE` and `@@ -l,n +l,n @@` hunks")]
    NoDiff,
    #[error("the diff for {path} is malformed ({reason}); every hunk needs a correct `@@ -l,n +l,n @@` header")]
    Malformed { path: String, reason: String },
    #[error(
        "the diff names the path {path:?}, which is absolute or leaves the codebase; use paths relative to its root"
    )]
    PathEscapes { path: String },
    #[error("{path} is protected (evaluation code or data); an idea may not change it")]
    Protected { path: String },
    #[error("{path} is not one of the editable files ({editable}); change only those")]
    NotEditable { path: String, editable: String },
    #[error("the diff changes {path} but that file does not exist; editable files: {editable}")]
    NoSuchFile { path: String, editable: String },
    #[error("the diff deletes {path}; deleting files is not allowed")]
    Deletes { path: String },
    #[error("the diff changes {path} twice; put all its hunks under one `--- a/{path}` header")]
    Duplicate { path: String },
    #[error("the diff does not apply to {path} ({reason}); copy the context lines exactly from the current file")]
    DoesNotApply { path: String, reason: String },
    #[error("cannot write {path}: {reason}")]
    Write { path: String, reason: String },
}

impl PatchError {
    /// Whether the diff tried to change a protected file (a reward-hacking attempt rather than a bad diff).
    pub(crate) fn is_protected(&self) -> bool {
        matches!(self, PatchError::Protected { .. })
    }
}

/// What an applied diff changed: the files, the code units (function, class or top-level name) it touched, and
/// its size.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct AppliedDiff {
    pub files: Vec<String>,
    /// `file:unit` for each touched function, class or top-level assignment (`train.py:fit`, `train.py:LR`);
    /// `file` alone when a hunk touches none of those.
    pub units: BTreeSet<String>,
    pub lines_added: usize,
    pub lines_removed: usize,
}

/// The editable and protected paths of a codebase, relative to its root. An entry ending in `/` covers a folder.
#[derive(Debug, Clone, Default)]
pub(crate) struct Whitelist {
    pub editable: Vec<String>,
    pub protected: Vec<String>,
}

impl Whitelist {
    fn covers(list: &[String], path: &str) -> bool {
        list.iter().any(|e| if e.ends_with('/') { path.starts_with(e.as_str()) } else { e == path })
    }

    /// Checks one path of the diff (already normalised).
    fn check(&self, path: &str) -> Result<(), PatchError> {
        if Self::covers(&self.protected, path) {
            return Err(PatchError::Protected { path: path.into() });
        }
        if !Self::covers(&self.editable, path) {
            return Err(PatchError::NotEditable { path: path.into(), editable: self.editable.join(", ") });
        }
        Ok(())
    }
}

/// The diff inside `[Code Changes]`: from its first `diff --git`, `---` or `Index:` line on (free text before it
/// is ignored).
pub(crate) fn extract_diff(code_changes: &str) -> Option<String> {
    let lines: Vec<&str> = code_changes.lines().collect();
    let start = lines.iter().position(|l| l.starts_with("diff --git ") || l.starts_with("--- "))?;
    let mut text = lines[start..].join("\n");
    text.push('\n');
    Some(text)
}

/// Splits a multi-file diff into one chunk per file, each starting at its `--- ` line (`diff --git` and `index`
/// lines are dropped: `diffy` reads only the `---`/`+++` headers and hunks).
fn split_files(diff: &str) -> Vec<String> {
    let lines: Vec<&str> = diff.lines().collect();
    let mut chunks: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    for (i, line) in lines.iter().enumerate() {
        let header = line.starts_with("--- ") && lines.get(i + 1).is_some_and(|n| n.starts_with("+++ "));
        if header {
            chunks.extend(current.take());
            current = Some(String::new());
        } else if line.starts_with("diff --git ") || line.starts_with("index ") {
            continue;
        }
        if let Some(c) = current.as_mut() {
            c.push_str(line);
            c.push('\n');
        }
    }
    chunks.extend(current);
    chunks
}

/// A diff header path made relative to the codebase root: drops a timestamp after a tab and git's `a/`/`b/`
/// prefix; `None` for `/dev/null`.
fn header_path(raw: &str) -> Result<Option<String>, PatchError> {
    let path = raw.split('\t').next().unwrap_or("").trim();
    if path == "/dev/null" {
        return Ok(None);
    }
    let path = path.strip_prefix("a/").or_else(|| path.strip_prefix("b/")).unwrap_or(path);
    let escapes = Path::new(path).components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
    if path.is_empty() || escapes {
        return Err(PatchError::PathEscapes { path: clip(path, 200) });
    }
    Ok(Some(path.trim_start_matches("./").to_string()))
}

/// Applies a unified diff to the files under `root`, all or nothing: every file is checked and patched in memory
/// before any is written.
pub(crate) fn apply_diff(diff: &str, root: &Path, whitelist: &Whitelist) -> Result<AppliedDiff, PatchError> {
    let (out, writes) = plan_diff(diff, root, whitelist)?;
    for (path, text) in writes {
        let target = root.join(&path);
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| PatchError::Write { path: path.clone(), reason: e.to_string() })?;
        }
        std::fs::write(&target, text).map_err(|e| PatchError::Write { path, reason: e.to_string() })?;
    }
    Ok(out)
}

/// What a diff would change under `root`, without writing anything (the idea's category for diagnostics).
pub(crate) fn diff_summary(diff: &str, root: &Path, whitelist: &Whitelist) -> Result<AppliedDiff, PatchError> {
    plan_diff(diff, root, whitelist).map(|(out, _)| out)
}

/// Checks and applies every file's patch in memory: the summary and the new text of each file.
fn plan_diff(
    diff: &str,
    root: &Path,
    whitelist: &Whitelist,
) -> Result<(AppliedDiff, Vec<(String, String)>), PatchError> {
    let chunks = split_files(diff);
    if chunks.is_empty() {
        return Err(PatchError::NoDiff);
    }
    let mut out = AppliedDiff::default();
    let mut writes: Vec<(String, String)> = Vec::new();
    for chunk in &chunks {
        let (path, new_text) = patch_one(chunk, root, whitelist, &mut out)?;
        if writes.iter().any(|(p, _)| *p == path) {
            return Err(PatchError::Duplicate { path });
        }
        out.files.push(path.clone());
        writes.push((path, new_text));
    }
    Ok((out, writes))
}

/// Parses, checks and applies the patch of one file in memory; returns its path and new text.
fn patch_one(
    chunk: &str,
    root: &Path,
    whitelist: &Whitelist,
    out: &mut AppliedDiff,
) -> Result<(String, String), PatchError> {
    let mut header = chunk.lines();
    let old = header_path(header.next().unwrap_or("").trim_start_matches("--- "))?;
    let new = header_path(header.next().unwrap_or("").trim_start_matches("+++ "))?;
    let path = match (&old, &new) {
        (_, Some(p)) => p.clone(),
        (Some(p), None) => return Err(PatchError::Deletes { path: p.clone() }),
        (None, None) => return Err(PatchError::NoDiff),
    };
    if let Some(o) = old.as_ref().filter(|o| **o != path) {
        whitelist.check(o)?;
    }
    whitelist.check(&path)?;
    let chunk = recount_hunks(chunk);
    let patch = diffy::Patch::from_str(&chunk)
        .map_err(|e| PatchError::Malformed { path: path.clone(), reason: clip(&e.to_string(), 200) })?;
    let base = match &old {
        None => String::new(),
        Some(o) => std::fs::read_to_string(root.join(o))
            .map_err(|_| PatchError::NoSuchFile { path: o.clone(), editable: whitelist.editable.join(", ") })?,
    };
    let new_text = diffy::apply(&base, &patch)
        .map_err(|e| PatchError::DoesNotApply { path: path.clone(), reason: clip(&e.to_string(), 200) })?;
    record_hunks(&patch, &base, &path, out);
    Ok((path, new_text))
}

/// Rewrites each `@@ -a,b +c,d @@` header with the line counts of its body. Models (and people) often miscount;
/// the counts carry no information the body does not, while the start lines are kept as hints for where the hunk
/// goes (`diffy` searches outward from them).
fn recount_hunks(chunk: &str) -> String {
    let lines: Vec<&str> = chunk.lines().collect();
    let mut out = String::with_capacity(chunk.len() + 64);
    let mut i = 0;
    let mut seen_hunk = false;
    while i < lines.len() {
        let line = lines[i];
        let Some((old_start, new_start, tail)) = parse_hunk_header(line) else {
            // Text after the last hunk (a model's closing remark) is not part of the diff.
            if !seen_hunk {
                out.push_str(line);
                out.push('\n');
            }
            i += 1;
            continue;
        };
        seen_hunk = true;
        let is_body = |l: &str| l.is_empty() || [' ', '+', '-', '\\'].iter().any(|c| l.starts_with(*c));
        let body_end =
            (i + 1..lines.len()).find(|&j| lines[j].starts_with("@@") || !is_body(lines[j])).unwrap_or(lines.len());
        // Blank lines after the last hunk line separate the diff from what follows; they are not context.
        let mut used_end = body_end;
        while used_end > i + 1 && lines[used_end - 1].is_empty() {
            used_end -= 1;
        }
        let body = &lines[i + 1..used_end];
        let old = body.iter().filter(|l| !l.starts_with('+') && !l.starts_with('\\')).count();
        let new = body.iter().filter(|l| !l.starts_with('-') && !l.starts_with('\\')).count();
        out.push_str(&format!("@@ -{old_start},{old} +{new_start},{new} @@{tail}\n"));
        for l in body {
            // An empty line inside a hunk is a blank context line whose leading space was lost.
            out.push_str(if l.is_empty() { " " } else { l });
            out.push('\n');
        }
        i = body_end;
    }
    out
}

/// `@@ -a[,b] +c[,d] @@ rest` -> (a, c, rest).
fn parse_hunk_header(line: &str) -> Option<(usize, usize, &str)> {
    let rest = line.strip_prefix("@@ -")?;
    let (ranges, tail) = rest.split_once(" @@")?;
    let (old, new) = ranges.split_once(" +")?;
    let start = |r: &str| r.split(',').next()?.trim().parse::<usize>().ok();
    Some((start(old)?, start(new)?, tail))
}

/// Adds a patch's size and touched units to `out`.
fn record_hunks(patch: &diffy::Patch<'_, str>, base: &str, path: &str, out: &mut AppliedDiff) {
    let base_lines: Vec<&str> = base.lines().collect();
    for hunk in patch.hunks() {
        let mut old_line = hunk.old_range().start().saturating_sub(1);
        for line in hunk.lines() {
            match line {
                diffy::Line::Context(_) => old_line += 1,
                diffy::Line::Delete(text) | diffy::Line::Insert(text) => {
                    if matches!(line, diffy::Line::Delete(_)) {
                        out.lines_removed += 1;
                    } else {
                        out.lines_added += 1;
                    }
                    let unit = top_level_name(text).or_else(|| enclosing_unit(&base_lines, old_line));
                    out.units.insert(match unit {
                        Some(u) => format!("{path}:{u}"),
                        None => path.to_string(),
                    });
                    if matches!(line, diffy::Line::Delete(_)) {
                        old_line += 1;
                    }
                }
            }
        }
    }
}

/// The definition or assignment a line starts at column 0: `def fit(` -> `fit`, `class Net` -> `Net`,
/// `fn main(` -> `main`, `LR = 0.1` -> `LR`.
fn top_level_name(line: &str) -> Option<String> {
    if line.starts_with(char::is_whitespace) {
        return None;
    }
    let ident = |s: &str| -> Option<String> {
        let name: String = s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        (!name.is_empty()).then_some(name)
    };
    for kw in ["def ", "async def ", "class ", "fn ", "pub fn ", "function "] {
        if let Some(rest) = line.strip_prefix(kw) {
            return ident(rest.trim_start());
        }
    }
    let name = ident(line)?;
    let rest = line[name.len()..].trim_start();
    ((rest.starts_with('=') && !rest.starts_with("==")) || rest.starts_with(':')).then_some(name)
}

/// The nearest definition at column 0 at or above line `index` (0-based) of the original file.
fn enclosing_unit(lines: &[&str], index: usize) -> Option<String> {
    let upto = index.min(lines.len().saturating_sub(1));
    lines.get(..=upto)?.iter().rev().find_map(|l| {
        let name = top_level_name(l)?;
        let is_def = ["def ", "async def ", "class ", "fn ", "pub fn ", "function "].iter().any(|k| l.starts_with(k));
        is_def.then_some(name)
    })
}
