#!/usr/bin/env python3
"""Convert a Llama-family GGUF (the SmolLM2 ideator) into a Hugging Face model folder.

Usage: gguf_to_hf.py GGUF OUT_DIR [--threads N]

Why this script exists: transformers can load a GGUF (`gguf_file=`), dequantising it to float32, but refuses to
`save_pretrained` such a model because its config carries a GGUF `quantization_config`. TRL and our own
safetensors-folder loader need a plain folder, so we rebuild the model from the config without that entry, copy
the state dict, and save:

    config.json              (plain Llama config; `rope_theta` also written at the top level, see below)
    model.safetensors        (float32, tied embeddings stored once)
    generation_config.json
    tokenizer.json           (pre-tokenizer fixed for `smollm`, see below)
    tokenizer_config.json    (with `chat_template`)

Two corrections to what transformers produces, both explained where they are made:
  * tokenizer: transformers maps the GGUF pre-tokenizer `smollm` to a plain ByteLevel pre-tokenizer; llama.cpp
    (and the original SmolLM2 tokenizer.json) first isolate every digit, then apply the GPT-2 regex. The two
    disagree on e.g. "  7" (a run of spaces before a digit). We write the digit-isolating version.
  * config: transformers 5 writes the rope base only inside `rope_parameters`; readers such as candle's
    LlamaConfig look for `rope_theta` and silently default to 10000 without it, so we write both.

Verification, after saving (the script exits non-zero if any check fails):
  1. logits: the reloaded folder and the GGUF load give the same logits on a test sentence (max abs diff printed);
  2. weights: every saved tensor equals an independent dequantisation of the GGUF with the `gguf` package
     (q/k un-permuted from llama.cpp's interleaved-rotary layout), so the folder does not merely repeat whatever
     transformers' GGUF reader did;
  3. tokenizer: the folder's tokenizer gives the same ids as the GGUF-loaded tokenizer on varied texts, except where
     the pre-tokenizer fix changes them (those cases are listed), and renders the chat template identically.

The last stdout line is one JSON object with the settings and results.
"""

import argparse
import json
import os
import sys
import time

# Quiet start-up: transformers' progress bars and advisory warnings would bury the report.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

TEST_SENTENCE = "The quick brown fox jumps over the lazy dog. In 1999, 42 researchers proposed 3 ideas."

# Texts that exercise the tokenizer: digits, unicode, runs of spaces, code, chat markup.
TOKENIZER_TEXTS = [
    "Hello world",
    " leading space and trailing space ",
    "In 1999, 42 people paid $3.14 each (total: 131.88).",
    "x  7 and   12345",
    "naïve café — 😀 日本語のテキスト",
    "def f(x):\n    return x ** 2  # square\n\n\tindented",
    "<|im_start|>user\nPropose an idea.<|im_end|>\n<|im_start|>assistant\n",
    "[Experiment] lr = 3e-4\n[Code Changes]\nwarmup_steps = 200\n[End]",
    "multiple\n\n\nnewlines   and    spaces",
    "CamelCaseIdentifiers_and_snake_case9x",
]

CHAT = [
    {"role": "system", "content": "You propose research ideas."},
    {"role": "user", "content": "Suggest one change to the learning rate schedule."},
]

# GGUF tensor name (after `blk.N.`) -> Hugging Face Llama parameter name (after `model.layers.N.`).
BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def log(msg):
    print(f"gguf_to_hf: {msg}", file=sys.stderr, flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("gguf", help="path to the .gguf file")
    p.add_argument("out_dir", help="folder to write (created; existing model files are overwritten)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--logit-tol", type=float, default=1e-4, help="max abs logit difference accepted (default 1e-4)")
    return p.parse_args()


def gguf_metadata(path):
    """Scalar/string metadata of the GGUF (big arrays such as the vocabulary are skipped)."""
    import gguf

    reader = gguf.GGUFReader(path)
    meta = {}
    for key, field in reader.fields.items():
        if key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
            continue
        try:
            meta[key] = field.contents()
        except Exception:  # an exotic field type we do not need
            pass
    return reader, meta


def fix_pretokenizer(tokenizer, gguf_pre):
    """Replace transformers' pre-tokenizer by llama.cpp's for `smollm`: isolate digits, then GPT-2 ByteLevel.

    Returns True when the tokenizer was changed."""
    if gguf_pre != "smollm":
        return False
    from tokenizers import pre_tokenizers

    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    return True


def plain_config(gguf_config):
    """The model config without the GGUF quantisation entry, loadable by any Llama reader."""
    from transformers import AutoConfig

    d = gguf_config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
        d.pop(key, None)
    d["dtype"] = "float32"
    config = AutoConfig.for_model(**d)
    return config


def patch_config_json(out_dir, config):
    """Add top-level `rope_theta` (and keep `rope_parameters`) so older readers get the right rotary base."""
    path = os.path.join(out_dir, "config.json")
    with open(path) as f:
        d = json.load(f)
    rope = d.get("rope_parameters") or {}
    theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        raise SystemExit("gguf_to_hf: error: the config has no rope base (rope_theta); cannot write a usable config.json")
    d["rope_theta"] = float(theta)
    with open(path, "w") as f:
        json.dump(d, f, indent=2, sort_keys=True)
        f.write("\n")
    return float(theta)


def portable_tokenizer_config(out_dir, template, context_length):
    """Make tokenizer_config.json readable beyond transformers 5 and by our own loader.

    transformers 5 may keep the template only in chat_template.jinja (our loader reads tokenizer_config.json),
    names a class older versions do not know (`TokenizersBackend`), and records local-path bookkeeping."""
    path = os.path.join(out_dir, "tokenizer_config.json")
    with open(path) as f:
        d = json.load(f)
    for key in ("is_local", "local_files_only", "name_or_path", "backend"):
        d.pop(key, None)
    d["tokenizer_class"] = "PreTrainedTokenizerFast"
    d["chat_template"] = template
    d["add_bos_token"] = False  # GGUF tokenizer.ggml.add_bos_token = false: SmolLM2 adds no BOS
    d["add_eos_token"] = False
    d["clean_up_tokenization_spaces"] = False  # llama.cpp's smollm vocabulary does not clean spaces
    if context_length:
        d["model_max_length"] = int(context_length)
    with open(path, "w") as f:
        json.dump(d, f, indent=2, ensure_ascii=False, sort_keys=True)
        f.write("\n")
    return d


def unpermute_qk(w, n_head):
    """Undo llama.cpp's convert permutation (interleaved rotary pairs -> HF's half-split layout)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def check_weights_against_gguf(reader, meta, state_dict):
    """Compare every saved tensor to the `gguf` package's own dequantisation. Returns (max_abs_diff, problems)."""
    import gguf

    arch = meta.get("general.architecture", "llama")
    n_head = int(meta[f"{arch}.attention.head_count"])
    n_kv = int(meta.get(f"{arch}.attention.head_count_kv", n_head))
    worst = 0.0
    problems = []
    seen = set()
    for t in reader.tensors:
        name = t.name
        if name in TOP_NAMES:
            hf = TOP_NAMES[name]
        elif name.startswith("blk."):
            _, idx, rest = name.split(".", 2)
            if rest not in BLOCK_NAMES:
                problems.append(f"unmapped GGUF tensor {name}")
                continue
            hf = f"model.layers.{idx}.{BLOCK_NAMES[rest]}"
        else:
            problems.append(f"unmapped GGUF tensor {name}")
            continue
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        if name.endswith("attn_q.weight"):
            w = unpermute_qk(w, n_head)
        elif name.endswith("attn_k.weight"):
            w = unpermute_qk(w, n_kv)
        if hf not in state_dict:
            problems.append(f"{hf} (from {name}) missing in the saved model")
            continue
        saved = state_dict[hf].float().numpy()
        if saved.shape != w.shape:
            problems.append(f"{hf}: saved shape {saved.shape} != GGUF {w.shape}")
            continue
        worst = max(worst, float(np.abs(saved - w).max()))
        seen.add(hf)
    tied = "lm_head.weight" not in seen
    extra = [k for k in state_dict if k not in seen and not (tied and k == "lm_head.weight")]
    problems += [f"saved tensor {k} has no GGUF counterpart" for k in extra]
    return worst, problems, len(seen)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = os.path.abspath(args.gguf)
    if not os.path.isfile(gguf_path):
        raise SystemExit(f"gguf_to_hf: error: {gguf_path} does not exist; pass the path of a .gguf file")
    gdir, gname = os.path.split(gguf_path)
    out_dir = os.path.abspath(args.out_dir)
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.time()

    reader, meta = gguf_metadata(gguf_path)
    log(f"loading {gguf_path} with transformers (dequantising to float32)")
    tok_gguf = AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
    model_gguf = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gname, dtype=torch.float32).eval()

    # 1. Model: rebuild without quantization_config, copy the state dict, save.
    config = plain_config(model_gguf.config)
    model = type(model_gguf)(config).to(torch.float32).eval()
    missing, unexpected = model.load_state_dict(model_gguf.state_dict(), strict=False)
    # With tied embeddings lm_head.weight may be listed as missing or unexpected depending on the version; it is
    # the same tensor as the embedding after tie_weights().
    missing = [k for k in missing if k != "lm_head.weight"]
    unexpected = [k for k in unexpected if k != "lm_head.weight"]
    if missing or unexpected:
        raise SystemExit(f"gguf_to_hf: error: state dict mismatch: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.save_pretrained(out_dir, safe_serialization=True, max_shard_size="100GB")
    model.generation_config.save_pretrained(out_dir)
    rope_theta = patch_config_json(out_dir, config)

    # 2. Tokenizer: fix the pre-tokenizer, save, make sure tokenizer_config.json carries the chat template.
    tok_fixed = AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
    changed = fix_pretokenizer(tok_fixed, meta.get("tokenizer.ggml.pre"))
    template = meta.get("tokenizer.chat_template") or tok_gguf.chat_template
    if not template:
        raise SystemExit("gguf_to_hf: error: the GGUF has no tokenizer.chat_template; cannot write a chat model folder")
    tok_fixed.chat_template = template
    tok_fixed.save_pretrained(out_dir)
    arch = meta.get("general.architecture", "llama")
    portable_tokenizer_config(out_dir, template, meta.get(f"{arch}.context_length"))
    # save_pretrained writes the weights owner-only (0600); the folder is shared with other users' tools.
    os.chmod(os.path.join(out_dir, "model.safetensors"), 0o644)
    log(f"saved to {out_dir} in {time.time() - t0:.1f} s; verifying")

    # Verification 1: logits of the reloaded folder vs the GGUF load.
    reloaded = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    tok_folder = AutoTokenizer.from_pretrained(out_dir)
    ids = torch.tensor([tok_folder(TEST_SENTENCE)["input_ids"]])
    with torch.no_grad():
        a = model_gguf(ids).logits
        b = reloaded(ids).logits
    logit_diff = float((a - b).abs().max())
    rope_ok = abs(float(reloaded.config.rope_parameters["rope_theta"]) - rope_theta) < 1e-3 if hasattr(
        reloaded.config, "rope_parameters"
    ) else True

    # Verification 2: weights against an independent dequantisation.
    saved = load_file(os.path.join(out_dir, "model.safetensors"))
    weight_diff, weight_problems, n_tensors = check_weights_against_gguf(reader, meta, saved)

    # Verification 3: tokenizer ids and chat template.
    tok_mismatch_unexplained = []
    changed_by_fix = []
    for text in TOKENIZER_TEXTS:
        ids_folder = tok_folder(text, add_special_tokens=False)["input_ids"]
        ids_fixed = tok_fixed(text, add_special_tokens=False)["input_ids"]
        ids_gguf = tok_gguf(text, add_special_tokens=False)["input_ids"]
        if ids_folder != ids_fixed:
            tok_mismatch_unexplained.append(text)
        elif ids_folder != ids_gguf:
            changed_by_fix.append({"text": text, "gguf_transformers": ids_gguf, "folder": ids_folder})
        if tok_folder.decode(ids_folder) != text:
            tok_mismatch_unexplained.append(f"round trip: {text!r}")
    chat_a = tok_gguf.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    chat_b = tok_folder.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    chat_ok = chat_a == chat_b

    files = sorted(os.listdir(out_dir))
    ok = (
        logit_diff <= args.logit_tol
        and weight_diff <= 1e-6
        and not weight_problems
        and not tok_mismatch_unexplained
        and chat_ok
        and rope_ok
    )
    for c in changed_by_fix:
        log(f"pre-tokenizer fix changes ids of {c['text']!r}: transformers-gguf {c['gguf_transformers']} -> {c['folder']}")
    for p in weight_problems:
        log(f"weight problem: {p}")
    for t in tok_mismatch_unexplained:
        log(f"tokenizer mismatch: {t!r}")
    print(f"logits max abs diff (folder vs GGUF load, {ids.shape[1]} tokens): {logit_diff:.3e}")
    print(f"weights max abs diff vs gguf-package dequantisation ({n_tensors} tensors): {weight_diff:.3e}")
    print(f"tokenizer: {len(TOKENIZER_TEXTS)} texts, {len(changed_by_fix)} changed by the smollm pre-tokenizer fix, "
          f"{len(tok_mismatch_unexplained)} unexplained mismatches; chat template identical: {chat_ok}")
    print(json.dumps({
        "tool": "gguf_to_hf",
        "gguf": gguf_path,
        "out_dir": out_dir,
        "files": files,
        "threads": args.threads,
        "rope_theta": rope_theta,
        "pretokenizer_fixed": changed,
        "logits_max_abs_diff": logit_diff,
        "weights_max_abs_diff_vs_gguf": weight_diff,
        "weight_problems": weight_problems,
        "tokenizer_texts": len(TOKENIZER_TEXTS),
        "tokenizer_changed_by_fix": [c["text"] for c in changed_by_fix],
        "tokenizer_unexplained_mismatches": tok_mismatch_unexplained,
        "chat_template_identical": chat_ok,
        "ok": ok,
        "seconds": round(time.time() - t0, 1),
    }))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
