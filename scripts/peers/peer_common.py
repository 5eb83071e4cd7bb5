"""Shared helpers of the peer benchmark scripts (threads, prompts, machine facts, the JSON result line).

Every peer script prints human-readable progress to stderr and ONE JSON object as the last line of stdout, holding
the settings it ran with and what it measured, so that a driver can run the peer and our Rust side with the same
settings and compute ratios from the two JSON lines.
"""

import json
import os
import platform
import statistics
import sys
import time

# Quiet start-up: progress bars and advisory warnings would bury the report, and tokenizers' own thread pool would
# compete with torch's threads for the same cores.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# A fixed English paragraph; prompts of P tokens are this text repeated and cut to P tokens. Content does not change
# the cost of a dense forward, only the length does, so any driver can rebuild an equally long prompt.
PROMPT_TEXT = (
    "Researchers who train language models on a fixed compute budget compare recipes by their validation loss. "
    "A recipe fixes the optimiser, the learning rate and its schedule, the warm-up, the weight decay, the batch "
    "size, the depth and width of the network, the normalisation and the activation function. Small changes to "
    "any of these can move the final loss, and the best recipe for one budget is not always the best for another. "
)


def log(tool, msg):
    print(f"{tool}: {msg}", file=sys.stderr, flush=True)


def set_threads(n):
    """Pin torch to n intra-op threads (and one inter-op thread) before any parallel work starts."""
    import torch

    torch.set_num_threads(n)
    set_interop = getattr(torch, "set_interop_threads", None)  # absent in some torch versions
    if set_interop is not None:
        try:
            set_interop(1)
        except RuntimeError:  # already set once in this process; harmless
            pass
    return torch.get_num_threads()


def prompt_ids(tokenizer, n_tokens):
    """Exactly n_tokens ids of PROMPT_TEXT repeated (no special tokens)."""
    one = tokenizer(PROMPT_TEXT, add_special_tokens=False)["input_ids"]
    reps = n_tokens // len(one) + 1
    return (one * reps)[:n_tokens]


def _cpu_jiffies():
    """(busy, total) jiffies over all cores from /proc/stat, or None where there is no /proc (not Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def cpu_busy(seconds=1.0):
    """Fraction of all cores busy over the next `seconds` (other processes included), or None if unknown."""
    a = _cpu_jiffies()
    time.sleep(seconds)
    b = _cpu_jiffies()
    if a is None or b is None or b[1] == a[1]:
        return None
    return round((b[0] - a[0]) / (b[1] - a[1]), 3)


def wait_for_quiet(tool, max_wait_s, threshold=0.15, window_s=3.0):
    """Wait (at most max_wait_s) until other processes keep less than `threshold` of the cores busy for window_s.

    Timings on a shared machine are only comparable when nobody else computes: with torch's OpenMP threads,
    losing half the cores can cost far more than half the speed. Returns the last busy fraction seen."""
    busy = cpu_busy(window_s)
    deadline = time.time() + max_wait_s
    reported = 0.0
    while busy is not None and busy > threshold and time.time() < deadline:
        if time.time() - reported > 60:  # one line a minute is enough
            log(tool, f"machine busy ({busy:.0%} of the cores); waiting for it to quiet down")
            reported = time.time()
        time.sleep(2.0)
        busy = cpu_busy(window_s)
    return busy


def add_contention_args(parser, unit="run"):
    """Flags that make timings usable on a machine shared with other work (see timed_runs)."""
    parser.add_argument("--quiet-wait", type=float, default=0.0, metavar="S",
                        help=f"before each timed {unit}, wait up to S seconds for other processes to leave the cores idle")
    parser.add_argument("--min-cpu-share", type=float, default=0.9, metavar="F",
                        help=f"a timed {unit} is clean when this process got at least this share of its threads' cores "
                             "(default 0.9); medians use clean ones when there are any")
    parser.add_argument("--max-attempts", type=int, default=None, metavar="N",
                        help=f"timed {unit}s at most, clean or not, while collecting the clean ones (default 2 x repeats)")


def timed_runs(tool, run, repeats, args):
    """Call run(i) until `repeats` clean runs (cpu_share >= args.min_cpu_share) or args.max_attempts runs in all.

    Each result dict must hold "cpu_share"; a "clean" flag is added. Returns all runs."""
    max_attempts = args.max_attempts or 2 * repeats
    runs = []
    while sum(r["clean"] for r in runs) < repeats and len(runs) < max_attempts:
        if args.quiet_wait > 0:
            wait_for_quiet(tool, args.quiet_wait)
        r = run(len(runs))
        r["clean"] = r["cpu_share"] is not None and r["cpu_share"] >= args.min_cpu_share
        runs.append(r)
    return runs


def runs_for_summary(runs):
    """The clean runs when there are any, else all (the result is then marked contended)."""
    clean = [r for r in runs if r.get("clean")]
    return clean or runs


def machine_facts():
    """What a reader needs to judge a timing: versions, cores, and how loaded the machine was."""
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "cpu_busy_before": cpu_busy(1.0),
        "host": platform.node(),
        "started_unix": round(time.time(), 1),
    }


def cpu_seconds():
    """CPU time used so far by this process, all threads (user + system)."""
    t = os.times()
    return t.user + t.system


def cpu_share(cpu_s, wall_s, threads):
    """Fraction of `threads` cores this process actually got over a wall-clock interval (1.0 = all of them).

    Well below 1 means other processes took the cores: the timing is not trustworthy, rerun when the machine is quiet."""
    return round(cpu_s / (wall_s * threads), 3) if wall_s > 0 else None


def sig(x, digits=4):
    """Round to significant digits (keeps 1e-06 readable, unlike round(x, 3))."""
    return float(f"{x:.{digits}g}") if isinstance(x, float) else x


def median(xs):
    return statistics.median(xs) if xs else None


def emit(result):
    """Print the result as the last stdout line (one JSON object); add the load average at the end."""
    result.setdefault("machine", {})["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    sys.stdout.flush()
    print(json.dumps(result, sort_keys=False), flush=True)


def require_model_dir(tool, path):
    """Refuse early, with a hint, when the model folder is missing (the GGUF must be converted first)."""
    cfg = os.path.join(path, "config.json")
    if not os.path.isfile(cfg):
        raise SystemExit(
            f"{tool}: error: {path} has no config.json; convert the GGUF first: "
            f"python scripts/peers/gguf_to_hf.py assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf {path}"
        )
