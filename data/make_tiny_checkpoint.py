"""Build data/tiny-gpt2: a small Hugging Face GPT-2 checkpoint for the README's checkpoint demo.

Random weights (seed 0) with structure that real checkpoints have: six
"<unused_k>" tokens share one row, as untrained reserved tokens often do (a
tie), and four tokens are averages of eight others (unreachable on any
domain: the fold of the final LayerNorm is linear in the rows).
Needs torch and transformers (the test extra); nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer
from tokenizers.models import WordLevel
from transformers import GPT2Config, GPT2LMHeadModel

OUT = Path(__file__).with_name("tiny-gpt2")
VOCAB = 256


def main() -> None:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2, n_positions=64,
                                       bos_token_id=0, eos_token_id=1))
    with torch.no_grad():
        wte = model.transformer.wte.weight
        model.transformer.ln_f.weight.uniform_(0.5, 1.5)
        model.transformer.ln_f.bias.normal_(0, 0.1)
        for k, i in enumerate(range(200, 204)):
            wte[i] = wte[8 * k + 10: 8 * k + 18].mean(dim=0)
        wte[250:256] = wte[250]
    model.save_pretrained(OUT)
    (OUT / "generation_config.json").unlink(missing_ok=True)
    write_tokenizer()
    print(f"wrote {OUT}")


def write_tokenizer() -> None:
    """A word-level tokenizer.json, built with the tokenizers library so that it loads as real ones do."""
    names = ["<|bos|>", "<|eos|>"] + [f"tok{i}" for i in range(2, 250)] + [f"<unused_{k}>" for k in range(6)]
    tokenizer = Tokenizer(WordLevel({t: i for i, t in enumerate(names)}, unk_token="<|eos|>"))
    tokenizer.add_special_tokens([AddedToken("<|bos|>", special=True), AddedToken("<|eos|>", special=True)])
    (OUT / "tokenizer.json").write_text(json.dumps(json.loads(tokenizer.to_str()), indent=1) + "\n",
                                        encoding="utf-8")


if __name__ == "__main__":
    main()
