#!/usr/bin/env python3
"""Generate model/tests/fixtures/smollm2_reference.json: token ids, chat renderings and per-token log-probs that
Hugging Face transformers computes on the default ideator GGUF (SmolLM2-135M-Instruct, Q4_1), for the Rust
tokenizer and decoder tests to match.

Run once, from the repository root, with a Python that has torch, transformers, tokenizers, gguf and numpy:

    IDEATOR_ASSETS=/path/to/assets /tmp/peers/bin/python scripts/reference/make_fixture.py [--gguf PATH] [--out PATH]

What it writes (the versions it ran with are recorded in the fixture itself):
- cases[i].round_trips: whether decoding cases[i].ids gives cases[i].text back (false only where the text
  holds bytes the vocabulary lacks);
- cases[i].ids: the tokenization of cases[i].text WITHOUT a BOS token (SmolLM2 does not add one anyway);
- cases[i].logprobs[j] = log p(ids[j+1] | ids[..=j]), float32, from transformers' float32 model (the GGUF
  dequantised by transformers), so len(logprobs) == len(ids) - 1;
- chat[k].rendered: transformers' apply_chat_template(messages, tokenize=False, add_generation_prompt=...)
  with the template stored in the GGUF, and chat[k].ids its tokenization.
- tokenizer_check: for every case, chat rendering and a few extra probe texts, the fixture ids and whether
  transformers' own GGUF tokenizer agrees with them (with its ids where it does not; see below).

Which tokenizer the ids come from. llama.cpp's name for SmolLM2's pre-tokenizer is `smollm`; the hub's
tokenizer.json of HuggingFaceTB/SmolLM2-135M-Instruct pre-tokenizes with Digits(individual_digits=True) then
ByteLevel(add_prefix_space=False, use_regex=True). transformers' GGUF loader does not know the name `smollm`
and keeps the plain GPT-2 byte-level split (no digit isolation). The fixture ids come from the hub pipeline
(transformers' GGUF vocabulary and merges with the hub's pre-tokenizer put back), and tokenizer_check records
whether transformers' GGUF tokenizer agrees on each text. Log-probs are computed on the fixture ids.
"""

import argparse
import hashlib
import json
import os
import platform
import re
import sys
from pathlib import Path

from importlib.metadata import version

import numpy as np
import tokenizers
import torch
from tokenizers import pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer

REPO = Path(__file__).resolve().parents[2]
ASSETS = Path(os.environ.get("IDEATOR_ASSETS", REPO / "assets"))
DEFAULT_GGUF = ASSETS / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_OUT = REPO / "model" / "tests" / "fixtures" / "smollm2_reference.json"

PARAGRAPH = (
    "Evolutionary search over research ideas keeps a database of proposals together with the scores their "
    "experiments obtained. Each epoch, part of the batch exploits the best ideas so far, asking the ideator for "
    "variants and combinations, while the rest explores, showing a random sample of earlier ideas, failures "
    "included, and asking for something new. Reinforcement learning instead updates the ideator's weights so "
    "that ideas with high measured reward become more likely. In practice the mean reward rises, but the best "
    "idea per epoch does not improve: the policy collapses onto a handful of safe, simple changes. Diagnostics "
    "that track diversity, such as the Vendi score of idea embeddings and the entropy of the knobs each idea "
    "touches, make this collapse visible while training runs rather than after the fact."
)

CASES = [
    ("digits", "The year 2024 had 366 days; pi is 3.14159, and 12345 + 67890 = 80235 (not 80,234)."),
    ("numbers_mixed", "v2.3.1 costs $1,000,000 or 1e-5 BTC at 0.001% -42 degrees; call 555-0199 #7 x2"),
    ("unicode", "Café naïve résumé Ångström — 東京は日本の首都です。 Emoji: 🤖🚀👩‍🔬 and ½ ² Ⅻ ١٢٣ 𝔘𝔫𝔦"),
    ("whitespace", "a  b   c    d\t\te\n\n\nf \n g   \t\n  end   "),
    ("leading_trailing_space", "  leading spaces, trailing space "),
    (
        "python_code",
        "def lr_at(step: int, warmup: int = 200) -> float:\n"
        "    \"\"\"Linear warm-up, then cosine decay.\"\"\"\n"
        "    if step < warmup:\n"
        "        return 3e-4 * (step + 1) / warmup\n"
        "    t = (step - warmup) / max(1, TOTAL - warmup)\n"
        "    return 0.5 * 3e-4 * (1 + math.cos(math.pi * t))  # [0, 3e-4]\n",
    ),
    (
        "chatml_markup",
        "<|im_start|>system\nYou are an ideator.<|im_end|>\n<|im_start|>user\nPropose one idea.<|im_end|>\n"
        "<|im_start|>assistant\n",
    ),
    (
        "idea_format",
        "[Experiment] Replace AdamW with Lion and shorten the warm-up, since sign-based updates tolerate larger "
        "early steps.\n[Code Changes]\noptimizer = \"lion\"\nlearning_rate = 3e-4\nwarmup_steps = 50\n"
        "weight_decay = 0.1\n[End]",
    ),
    ("punctuation", "I'm sure they'll say it's fine—don't you think?! (Yes!!!) \"quoted\" 'single' ... ;-)"),
    (
        "markdown_url",
        "See https://example.com/path?q=1&x=2 or **bold** _italic_ `code`\n# Heading\n- item 1\n- item 2\n",
    ),
    ("special_tokens_inline", "one<|endoftext|>two <file_sep>three<jupyter_code>x = 1"),
    ("paragraph", PARAGRAPH),
    # Bytes 0x04, 0x06, 0x13, 0x14, 0x16, 0x1d (and 0xc0, 0xc1, 0xf1, 0xf2, 0xf5..0xff) have no token in
    # SmolLM2's vocabulary: the BPE drops them (unk_token is null), so this text does not round-trip.
    ("unencodable_bytes", "tab\tbell\x07 eot\x04 ack\x06 end"),
]

CHATS = [
    (
        [
            {"role": "system", "content": "You propose research ideas in the [Experiment] ... [End] format."},
            {"role": "user", "content": "Propose one idea to speed up GPT-2 training."},
        ],
        True,
    ),
    ([{"role": "user", "content": "What is 2+2?"}], True),
    (
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hi."},
            {"role": "assistant", "content": "Hi! 👋"},
        ],
        False,
    ),
]

# Extra texts used only to compare transformers' GGUF tokenizer with the hub pipeline.
PROBES = ["12345", " 12345", "a1b2c3", "x²+y² ½ ¾ ⅔ Ⅻ ١٢٣ ٤", "3.14159 2.71828", "  99 bottles"]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def f32(x) -> float:
    """The float32 value as the shortest decimal that parses back to the same float32."""
    return float(str(np.float32(x)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", type=Path, default=DEFAULT_GGUF)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)

    folder, name = str(args.gguf.parent), args.gguf.name
    tf_tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # The hub pipeline: same vocabulary, merges and added tokens, SmolLM2's own pre-tokenizer.
    hub = tokenizers.Tokenizer.from_str(tf_tokenizer.backend_tokenizer.to_str())
    hub.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )

    def compare(text: str) -> tuple[list[int], dict]:
        ids = hub.encode(text, add_special_tokens=False).ids
        tf_ids = tf_tokenizer.encode(text, add_special_tokens=False)
        check = {"text": text, "ids": ids, "transformers_gguf_agrees": tf_ids == ids}
        if tf_ids != ids:
            check["transformers_gguf_ids"] = tf_ids
        return ids, check

    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()

    def logprobs(ids: list[int]) -> list[float]:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].to(torch.float32)
        logp = torch.log_softmax(logits, dim=-1)
        picked = logp[:-1].gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1)
        return [f32(x) for x in picked.numpy()]

    checks = []
    cases = []
    for case_name, text in CASES:
        ids, check = compare(text)
        checks.append(check)
        round_trips = hub.decode(ids, skip_special_tokens=False) == text
        cases.append(
            {"name": case_name, "text": text, "round_trips": round_trips, "ids": ids, "logprobs": logprobs(ids)}
        )
        print(f"{case_name}: {len(ids)} tokens", file=sys.stderr)
    for text in PROBES:
        checks.append(compare(text)[1])

    chats = []
    for messages, add_generation_prompt in CHATS:
        rendered = tf_tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
        ids, check = compare(rendered)
        checks.append(check)
        chats.append(
            {"messages": messages, "add_generation_prompt": add_generation_prompt, "rendered": rendered, "ids": ids}
        )

    fixture = {
        "model_file": args.gguf.name,
        "model_sha256": sha256(args.gguf),
        "generator": "scripts/reference/make_fixture.py",
        "method": (
            "ids: SmolLM2's hub tokenizer pipeline (Digits(individual) + ByteLevel(no prefix space)) over the "
            "GGUF vocabulary, no BOS; logprobs[j] = log p(ids[j+1] | ids[..=j]) from transformers' float32 "
            "model loaded from the GGUF (eager attention), log_softmax in float32; chat.rendered: transformers' "
            "apply_chat_template with the GGUF's template"
        ),
        "versions": {
            "python": platform.python_version(),
            **{package: version(package) for package in ("torch", "transformers", "tokenizers", "gguf", "numpy")},
        },
        "bos_id": tf_tokenizer.bos_token_id,
        "eos_id": tf_tokenizer.eos_token_id,
        "pad_id": tf_tokenizer.pad_token_id,
        "vocab_size": len(tf_tokenizer),
        "tokenizer_check": checks,
        "cases": cases,
        "chat": chats,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(fixture, ensure_ascii=False, indent=1)
    # One line per list of numbers keeps the file small and readable.
    text = re.sub(
        r"\[\n\s+(-?[0-9][0-9.e+-]*(?:,\n\s+-?[0-9][0-9.e+-]*)*)\n\s*\]",
        lambda m: "[" + ", ".join(m.group(1).replace(",", " ").split()) + "]",
        text,
    )
    assert json.loads(text) == fixture
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    disagreements = [c["text"] for c in checks if not c["transformers_gguf_agrees"]]
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes); transformers' GGUF tokenizer disagrees with the "
          f"hub pipeline on {len(disagreements)} of {len(checks)} texts: {disagreements!r}", file=sys.stderr)


if __name__ == "__main__":
    main()
