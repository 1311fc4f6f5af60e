"""argmaxcheck inside test suites and training loops, and the public :func:`audit`.

* :func:`audit` is the engine's audit that also takes a live ``transformers`` model (its head
  read and its final norm folded by :mod:`argmaxcheck.sources`, which the engine never imports);
* :func:`assert_all_argmaxable` fails a pytest test (AssertionError) with the
  audit's explanation when any token is flagged;
* :class:`ArgmaxCallback` is a ``transformers`` ``TrainerCallback`` that audits
  the model's output layer every N steps and logs the counts (``transformers``
  is optional: the class is built the first time it is used).
"""

from __future__ import annotations

from collections.abc import Sequence

from .domains import Domain
from .engine import AuditOptions
from .engine import audit as audit_layer
from .errors import InputError
from .inputside import attach_input_side
from .report.formats.text import render as render_text
from .report.gate import FLAGGED, GatePolicy, GateResult, evaluate
from .report.model import PRACTICAL, UNARGMAXABLE, UNDECIDED, AuditReport


def audit(weight, bias=None, domain: Domain | None = None, tokens=None, **kwargs) -> AuditReport:
    """Decide, for every token, whether some input in ``domain`` makes it the strict argmax.

    The parameters, result and errors are those of :func:`argmaxcheck.engine.audit` (arrays, an
    ``OutputLayer`` or a module with ``weight``; ``tokens`` as ids or a selection string). A
    ``transformers`` model (anything with ``config`` and ``state_dict``) is read here, above the
    engine: its head is audited on the features its final norm can produce, unless ``domain`` says
    otherwise.
    """
    if hasattr(weight, "config") and hasattr(weight, "state_dict"):
        from .sources.huggingface import checkpoint_from_model  # noqa: PLC0415 - transformers only when used

        if bias is not None:
            raise InputError("bias= cannot be combined with a transformers model (its head is read from the model)")
        loaded = checkpoint_from_model(weight)
        return audit_layer(loaded.layer, domain=domain if domain is not None else loaded.domain, tokens=tokens,
                           **kwargs)
    return audit_layer(weight, bias, domain, tokens, **kwargs)



def audit_model(model, tokenizer=None, options: AuditOptions | None = None,
                tokens: Sequence[int] | None = None) -> AuditReport:
    """Audit a live ``transformers`` model's head on the features its final norm can produce.

    ``tokens``: audit only these ids (the added tokens of a fine-tune, say). With a fast ``tokenizer`` the
    report also carries its round trip (``report.round_trip``), and flagged added tokens on a head with a
    bias their smallest bias raise, as ``argmaxcheck audit`` gives them.
    """
    from .sources.huggingface import checkpoint_from_model  # noqa: PLC0415
    from .sources.tokens import transformers_table  # noqa: PLC0415

    ckpt = checkpoint_from_model(model, tokenizer)
    if tokenizer is not None:  # decoded forms and kinds, as for folders
        ckpt = transformers_table(tokenizer, ckpt.layer.num_classes).apply(ckpt)
    report = audit_layer(ckpt.layer, domain=ckpt.domain, tokens=None if tokens is None else list(tokens),
                         options=options)
    report.source, report.checkpoint = type(model).__name__, ckpt.info
    return attach_input_side(report, ckpt, ckpt.layer, ckpt.domain)


def assert_all_argmaxable(source, bias=None, domain: Domain | None = None, *, ignore: Sequence[str] = (),
                          tokenizer=None, options: AuditOptions | None = None) -> AuditReport:
    """Audit and raise ``AssertionError`` (with the report as text) if any token is flagged.

    The message's first line names what failed, with counts per category
    (``argmaxcheck: 2 undecided (no certificate could be checked)``).

    Parameters
    ----------
    source : array-like, OutputLayer, module, AuditReport or transformers model
        A weight matrix or a module with ``.weight`` such as ``torch.nn.Linear``
        (with ``bias`` and ``domain``), an already computed report, or a model
        with ``config`` and ``state_dict`` (its final norm folded in, as for
        checkpoint folders).
    ignore : sequence of str
        Tokens never counted: ids, ``a-b`` ranges, exact strings or ``re:REGEX``.

    Returns
    -------
    AuditReport
        When every counted token is argmaxable.
    """
    if isinstance(source, AuditReport):
        report = source
    elif hasattr(source, "config") and hasattr(source, "state_dict"):
        report = audit_model(source, tokenizer, options)
    else:  # arrays, an OutputLayer, or a module with .weight (and .bias): audit() validates each
        report = audit_layer(source, bias, domain=domain, options=options)
    gate = evaluate(report, GatePolicy(ignore=tuple(ignore)))
    if not gate.passed:
        raise AssertionError(f"argmaxcheck: {_what_failed(gate)}\n" + render_text(report, gate))
    return report


_MEANING = {UNARGMAXABLE: "can never be the argmax", PRACTICAL: "win only by less than the logits' precision",
            UNDECIDED: "no certificate could be checked"}


def _what_failed(gate: GateResult) -> str:
    """'2 unargmaxable (can never be the argmax), 1 undecided (...)': the categories that failed, with counts."""
    return ", ".join(f"{gate.counts[v]} {v.replace('_', ' ')} ({_MEANING[v]})"
                     for v in FLAGGED if gate.exceeded(v))


_callback_class = None


def ArgmaxCallback(every: int = 500, tokenizer=None, options: AuditOptions | None = None,
                   on_train_end: bool = True, tokens: Sequence[int] | None = None):
    """A ``transformers.TrainerCallback`` auditing the output layer every ``every`` optimizer steps.

    Each audit logs ``argmaxcheck/<verdict>`` counts (and, with a fast ``tokenizer``,
    ``argmaxcheck/not_round_trip``) through the Trainer's loggers and keeps the
    reports in the callback's ``history`` as ``(step, summary)`` pairs and the
    last report in ``last_report``. ``tokens``: audit only these ids (the
    tokens a fine-tune added: a few solves per audit instead of the whole vocabulary).
    """
    global _callback_class
    if _callback_class is None:
        try:
            from transformers import TrainerCallback  # noqa: PLC0415
        except ImportError:
            raise ImportError("ArgmaxCallback needs transformers: pip install 'argmaxcheck[hf]'") from None
        _callback_class = type("ArgmaxCallback", (TrainerCallback,), dict(_CallbackMethods.__dict__))
    return _callback_class(every, tokenizer, options, on_train_end, tokens)


class _CallbackMethods:
    """The callback's body; mixed into a TrainerCallback subclass when transformers is present."""

    def __init__(self, every, tokenizer, options, on_train_end, tokens=None):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every, self.tokenizer, self.options, self.at_end = every, tokenizer, options, on_train_end
        self.tokens = None if tokens is None else list(tokens)
        self.history: list[tuple[int, dict]] = []
        self.last_report: AuditReport | None = None

    def _run(self, state, model):
        if model is None or (self.history and self.history[-1][0] == state.global_step):
            return
        was_training = model.training
        report = audit_model(model, self.tokenizer, self.options, self.tokens)
        model.train(was_training)
        summary = report.summary()
        self.history.append((state.global_step, summary))
        self.last_report = report
        keys = ("argmaxable", "unargmaxable", "practically_unreachable", "undecided")
        logs = {f"argmaxcheck/{k}": summary[k] for k in keys}
        if summary["not_round_trip"] is not None:
            logs["argmaxcheck/not_round_trip"] = summary["not_round_trip"]
        state.log_history.append({**logs, "step": state.global_step})

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            self._run(state, model)
        return control

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.at_end:
            self._run(state, model)
        return control
