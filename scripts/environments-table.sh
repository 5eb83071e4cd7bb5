#!/usr/bin/env bash
# Regenerates an environment's table in ENVIRONMENTS.md (between its `ENV-table` markers): runs the hand-written
# ideas in scripts/ENV-ideas/ (and the baseline) in that environment through `ideator exec`, over a few seeds, and
# writes the measured rewards.
# Usage: scripts/environments-table.sh [ENV] [SCALE] [SEEDS]   (defaults: pretrain tiny "0 1").
# At tiny on one core: pretrain ~10 min; posttrain ~2 min with seeds "0 1 2" (plus ~30 s once for its cached base).
set -euo pipefail
cd "$(dirname "$0")/.."
env_name="${1:-pretrain}"
scale="${2:-tiny}"
seeds="${3:-0 1}"
[ -d "scripts/$env_name-ideas" ] || { echo "no ideas folder scripts/$env_name-ideas" >&2; exit 1; }
export IDEATOR_ASSETS="${IDEATOR_ASSETS:-$PWD/assets}"
cargo build --release --quiet --bin ideator
bin="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/ideator"
results="$(mktemp)"
trap 'rm -f "$results"' EXIT
for seed in $seeds; do
  echo "baseline seed $seed" >&2
  printf 'baseline\t%s\t' "$seed" >> "$results"
  "$bin" exec --env "$env_name" --scale "$scale" --seed "$seed" --json >> "$results"
  for idea in scripts/"$env_name"-ideas/*.md; do
    name="$(basename "$idea" .md)"
    echo "$name seed $seed" >&2
    printf '%s\t%s\t' "$name" "$seed" >> "$results"
    "$bin" exec --env "$env_name" --scale "$scale" --seed "$seed" --idea "$idea" --json >> "$results"
  done
done
python3 - "$results" "$scale" "$seeds" "$env_name" <<'PY'
import io, json, sys, statistics, pathlib, os, contextlib
path, scale, seeds, env = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4]
doc = pathlib.Path("ENVIRONMENTS.md").read_text()
begin, end = f"<!-- {env}-table:begin -->\n", f"<!-- {env}-table:end -->"
if begin not in doc or end not in doc:
    sys.exit(f"ENVIRONMENTS.md lacks the {env}-table markers")
# What the reward is, and the metric shown next to it, per environment.
reward_text = {"pretrain": "1/val_loss", "posttrain": "held-out accuracy (greedy, exact match)"}.get(env, "the environment's score")
extra = {"pretrain": ("val_loss", "val_loss", "{:.4f}"), "posttrain": ("mean KL", "mean_kl", "{:.3f}")}.get(env)
table = io.StringIO()
contextlib.redirect_stdout(table).__enter__()
rows = {}
for line in open(path):
    name, seed, js = line.rstrip("\n").split("\t", 2)
    rows.setdefault(name, []).append(json.loads(js))
def changes(name):
    if name == "baseline":
        return "(none)"
    text = pathlib.Path(f"scripts/{env}-ideas/{name}.md").read_text()
    body = text.split("[Code Changes]")[1].split("[End]")[0].strip()
    return "<br>".join(f"`{l.strip()}`" for l in body.splitlines() if l.strip())
def mean(xs):
    return statistics.mean(xs) if xs else float("nan")
base = mean([r["reward"] for r in rows["baseline"] if r["status"] == "ok"])
print(f"Hand-written ideas (`scripts/{env}-ideas/`) at scale `{scale}`, seeds {', '.join(seeds)}; reward = {reward_text},")
print(f"mean over seeds; a failed run scores 0. Produced by `scripts/environments-table.sh {env}`;")
threads = os.environ.get("IDEATOR_THREADS", "1")
print(f"{os.cpu_count()} CPU cores, {threads} thread(s) per run (`IDEATOR_THREADS`; rewards do not depend on it), machine shared with other jobs, so seconds are indicative only.\n")
extra_head = f" {extra[0]} |" if extra else ""
print(f"| idea | code changes | reward | min-max |{extra_head} vs baseline | steps | status | seconds |")
print("| --- | --- | --- | --- |" + (" --- |" if extra else "") + " --- | --- | --- | --- |")
for name, rs in rows.items():
    ok = [r for r in rs if r["status"] == "ok"]
    reward = mean([r["reward"] for r in rs])
    rewards = [r["reward"] for r in rs]
    spread = f"{min(rewards):.4f}-{max(rewards):.4f}"
    steps = mean([r["metrics"]["steps"] for r in ok])
    status = "ok" if len(ok) == len(rs) else ", ".join(sorted({r["cause"] or "ok" for r in rs}))
    delta = f"{100 * (reward / base - 1):+.1f}%" if name != "baseline" else ""
    steps_text = f"{steps:.0f}" if ok else ""
    extra_cell = ""
    if extra:
        values = [r["metrics"][extra[1]] for r in ok if extra[1] in r["metrics"]]
        extra_cell = f" {extra[2].format(mean(values)) if values else ''} |"
    secs = mean([r["seconds"] for r in rs])
    print(f"| {name} | {changes(name)} | {reward:.4f} | {spread} |{extra_cell} {delta} | {steps_text} | {status} | {secs:.1f} |")
head, rest = doc.split(begin, 1)
pathlib.Path("ENVIRONMENTS.md").write_text(head + begin + table.getvalue() + end + rest.split(end, 1)[1])
PY
echo "wrote ENVIRONMENTS.md" >&2
