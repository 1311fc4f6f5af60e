"""Check a fine-tune's added tokens on both sides while it trains (docs/added-tokens.md).

A tiny GPT-2 gets three added tokens with ``resize_token_embeddings(..., mean_resizing=True)``;
``ArgmaxCallback(tokens=...)`` audits just those rows every 2 steps: can each be the argmax, with
its certificate, and does the tokenizer give each back from its own text. Runs on a CPU in seconds.

``python added_tokens_callback.py FOLDER`` also saves the fine-tuned model and its tokenizer to FOLDER,
for ``argmaxcheck audit FOLDER --tokens 64-66``.
"""

import sys
import tempfile

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from argmaxcheck import ArgmaxCallback

# A byte-level tokenizer for the model's 64 base tokens, then three added tokens (ids 64, 65, 66).
alphabet = [chr(c) for c in range(ord("a"), ord("a") + 26)] + ["Ġ" + chr(c) for c in range(ord("a"), ord("a") + 26)]
base = Tokenizer(models.BPE({p: i for i, p in enumerate(alphabet + [f"x{i}" for i in range(12)])}, merges=[]))
base.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
base.decoder = decoders.ByteLevel()
tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=base)
tokenizer.add_tokens(["<tool>", "</tool>", "<think>"])

torch.manual_seed(0)
model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2,
                                                             n_positions=16))
model.resize_token_embeddings(len(tokenizer), mean_resizing=True)  # rows 64-66: mean + small noise
added = list(range(64, len(tokenizer)))

callback = ArgmaxCallback(every=2, tokenizer=tokenizer, tokens=added)
data = [{"input_ids": torch.randint(0, 67, (8,)), "labels": torch.randint(0, 67, (8,))} for _ in range(8)]
with tempfile.TemporaryDirectory() as out:
    args = transformers.TrainingArguments(output_dir=out, max_steps=4, per_device_train_batch_size=4,
                                          learning_rate=1e-3, report_to=[], use_cpu=True, save_strategy="no",
                                          logging_steps=100, disable_tqdm=True)
    transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[callback]).train()

for step, summary in callback.history:
    print(f"step {step}: {summary['argmaxable']} argmaxable, {summary['unargmaxable']} unargmaxable,"
          f" {summary['undecided']} undecided, {summary['not_round_trip']} not round-trip (of {summary['audited']})")
report = callback.last_report
for t in report.tokens:
    print(f"  {t.id} {report.token_text(t.id)}: {t.verdict} ({report.explain(t)});"
          f" round trip {report.round_trip.status[t.id]}")

if len(sys.argv) > 1:  # a checkpoint folder for the command line
    model.save_pretrained(sys.argv[1])
    tokenizer.save_pretrained(sys.argv[1])
