#!/usr/bin/env bash
# Regenerates the pretrain table of ENVIRONMENTS.md (between its `pretrain-table` markers): runs the hand-written
# ideas in scripts/pretrain-ideas/ (and the baseline) in the pretrain environment through `ideator exec`, over a few
# seeds, and writes the measured rewards.
# Usage: scripts/environments-table.sh [SCALE] [SEEDS]   (defaults: tiny "0 1"); takes ~10 min at tiny on one core.
set -euo pipefail
cd "$(dirname "$0")/.."
scale="${1:-tiny}"
seeds="${2:-0 1}"
export IDEATOR_ASSETS="${IDEATOR_ASSETS:-$PWD/assets}"
cargo build --release --quiet --bin ideator
bin="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/ideator"
results="$(mktemp)"
trap 'rm -f "$results"' EXIT
for seed in $seeds; do
  echo "baseline seed $seed" >&2
  printf 'baseline\t%s\t' "$seed" >> "$results"
  "$bin" exec --env pretrain --scale "$scale" --seed "$seed" --json >> "$results"
  for idea in scripts/pretrain-ideas/*.md; do
    name="$(basename "$idea" .md)"
    echo "$name seed $seed" >&2
    printf '%s\t%s\t' "$name" "$seed" >> "$results"
    "$bin" exec --env pretrain --scale "$scale" --seed "$seed" --idea "$idea" --json >> "$results"
  done
done
python3 - "$results" "$scale" "$seeds" <<'PY'
import io, json, sys, statistics, pathlib, os, contextlib
path, scale, seeds = sys.argv[1], sys.argv[2], sys.argv[3].split()
doc = pathlib.Path("ENVIRONMENTS.md").read_text()
begin, end = "<!-- pretrain-table:begin -->\n", "<!-- pretrain-table:end -->"
if begin not in doc or end not in doc:
    sys.exit("ENVIRONMENTS.md lacks the pretrain-table markers")
table = io.StringIO()
contextlib.redirect_stdout(table).__enter__()
rows = {}
for line in open(path):
    name, seed, js = line.rstrip("\n").split("\t", 2)
    rows.setdefault(name, []).append(json.loads(js))
def changes(name):
    if name == "baseline":
        return "(none)"
    text = pathlib.Path(f"scripts/pretrain-ideas/{name}.md").read_text()
    body = text.split("[Code Changes]")[1].split("[End]")[0].strip()
    return "<br>".join(f"`{l.strip()}`" for l in body.splitlines() if l.strip())
def mean(xs):
    return statistics.mean(xs) if xs else float("nan")
base = mean([r["reward"] for r in rows["baseline"] if r["status"] == "ok"])
print(f"Hand-written ideas (`scripts/pretrain-ideas/`) at scale `{scale}`, seeds {', '.join(seeds)}; reward = 1/val_loss,")
print("mean over seeds; a failed run scores 0. Produced by `scripts/environments-table.sh`;")
print(f"{os.cpu_count()} CPU cores, one thread per run (`ideator exec` default), machine shared with other jobs, so seconds are indicative only.\n")
print("| idea | code changes | reward | val_loss | vs baseline | steps | status | seconds |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for name, rs in rows.items():
    ok = [r for r in rs if r["status"] == "ok"]
    reward = mean([r["reward"] for r in rs])
    loss = mean([r["metrics"]["val_loss"] for r in ok])
    steps = mean([r["metrics"]["steps"] for r in ok])
    status = "ok" if len(ok) == len(rs) else ", ".join(sorted({r["cause"] or "ok" for r in rs}))
    delta = f"{100 * (reward / base - 1):+.1f}%" if name != "baseline" else ""
    steps_text = f"{steps:.0f}" if ok else ""
    loss_text = f"{loss:.4f}" if ok else ""
    secs = mean([r["seconds"] for r in rs])
    print(f"| {name} | {changes(name)} | {reward:.4f} | {loss_text} | {delta} | {steps_text} | {status} | {secs:.1f} |")
head, rest = doc.split(begin, 1)
pathlib.Path("ENVIRONMENTS.md").write_text(head + begin + table.getvalue() + end + rest.split(end, 1)[1])
PY
echo "wrote ENVIRONMENTS.md" >&2
