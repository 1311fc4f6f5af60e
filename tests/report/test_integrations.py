"""argmaxcheck inside training: the TrainerCallback on a tiny GPT-2, and assert_all_argmaxable on a model."""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from argmaxcheck import ArgmaxCallback, assert_all_argmaxable  # noqa: E402
from argmaxcheck.integrations import audit_model  # noqa: E402


def _tiny_model(tied_rows=()):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=16)
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        for a, b in tied_rows:
            model.transformer.wte.weight[a] = model.transformer.wte.weight[b]
    return model


def test_callback_audits_every_n_steps_and_logs_counts(tmp_path):
    model = _tiny_model(tied_rows=[(63, 62)])  # two identical rows: both unargmaxable (a tie)
    data = [{"input_ids": torch.randint(0, 64, (8,)), "labels": torch.randint(0, 64, (8,))} for _ in range(8)]
    callback = ArgmaxCallback(every=2)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4,
                                          learning_rate=0.0, report_to=[], use_cpu=True, save_strategy="no",
                                          logging_steps=100, disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    trainer.train()
    steps = [step for step, _ in callback.history]
    assert steps == [2, 4]  # every 2 steps; the end-of-training audit at step 4 is not repeated
    for _, summary in callback.history:
        assert summary["unargmaxable"] == 2 and summary["num_classes"] == 64
        assert summary["domain"]["kind"] == "ball"  # the final LayerNorm was folded in
    logged = [h for h in trainer.state.log_history if "argmaxcheck/unargmaxable" in h]
    assert [h["step"] for h in logged] == [2, 4] and all(h["argmaxcheck/unargmaxable"] == 2 for h in logged)
    assert model.training  # the audit left the model's mode alone


def test_callback_rejects_a_bad_interval():
    with pytest.raises(ValueError, match="every"):
        ArgmaxCallback(every=0)


def test_assert_all_argmaxable_on_a_live_model():
    report = audit_model(_tiny_model())
    assert report.checkpoint["norm"] == "layernorm" and report.summary()["audited"] == 64
    already = [str(t.id) for t in report.tokens if t.verdict != "argmaxable"]  # none expected; kept general
    tied = _tiny_model(tied_rows=[(63, 62)])
    with pytest.raises(AssertionError, match="63"):
        assert_all_argmaxable(tied)
    assert assert_all_argmaxable(tied, ignore=[*already, "62-63"]).summary()["unargmaxable"] == 2


def test_added_tokens_callback_example_runs(tmp_path):
    """docs/examples/added_tokens_callback.py: three mean-resized added tokens audited during training."""
    import runpy  # noqa: PLC0415
    import sys  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    pytest.importorskip("tokenizers")
    script = Path(__file__).resolve().parents[2] / "docs" / "examples" / "added_tokens_callback.py"
    argv = sys.argv
    sys.argv = [str(script), str(tmp_path / "demo")]
    try:
        scope = runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = argv
    callback = scope["callback"]
    assert [step for step, _ in callback.history] == [2, 4]
    for _, summary in callback.history:
        assert summary["audited"] == 3 and summary["not_round_trip"] == 0
    report = callback.last_report
    assert {report.token_kinds[t.id] for t in report.tokens} == {"added"}
    assert all(report.round_trip.status[t.id] is True for t in report.tokens)
    for t in report.tokens:  # every verdict with its checked evidence
        assert (t.witness is not None) if t.verdict == "argmaxable" else (t.support is not None or t.tie_with)
    assert (tmp_path / "demo" / "tokenizer.json").is_file()
