"""The audit's result as plain data: per-token records, summary, JSON and certificate file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..selection import KINDS, compact_ranges
from .escape import PLAIN, Style, escape_token, printable
from .stats import AuditStats

ARGMAXABLE = "argmaxable"
UNARGMAXABLE = "unargmaxable"
UNDECIDED = "undecided"
# Argmaxable in exact arithmetic, but its best lead is below the logits' precision (precision.py).
PRACTICAL = "practically_unreachable"
VERDICTS = (ARGMAXABLE, PRACTICAL, UNARGMAXABLE, UNDECIDED)
# Tokens added to a model, as ``--tokens kind:added`` selects them (tokenizer.json's added tokens, special or
# not, and tokens past the base vocabulary; GGUF's user-defined and control tokens): the JSON report keeps a
# record of each audited one, argmaxable or not, so both sides of every added token are in it.
ADDED_KINDS = KINDS["added"]

MARGIN_DOC = (
    "logit gap s_i(x) - max_{j!=i} s_j(x). Argmaxable: a certified lower bound on the gap at the witness x "
    "(bias-free layers on R^d: x has unit Euclidean norm). Unargmaxable: a certified upper bound on the "
    "best gap over the domain, from the certificate (<= 0; 0 means the best the token can do is a tie). "
    "Practically unreachable: as for argmaxable, at the point of its best margin; `best_margin` is that "
    "best margin and `threshold` the precision limit it falls below."
)


SCHEMA_VERSION = "1.2"  # of the JSON report; docs/report-schema.md, argmaxcheck/report/report.schema.json


@dataclass(frozen=True, eq=False)
class RoundTrip:
    """The input side of every row: whether the tokenizer gives back ``[id]`` for the token's own text.

    ``status[i]`` is ``True``, ``False``, ``"special"`` (a special token, produced only by the tokenizer's
    special-token matching) or ``None`` (no token: a padding row). ``produced[i]`` holds the ids the
    tokenizer gave for each row whose status is ``False`` (:mod:`argmaxcheck.sources.roundtrip`).
    """

    status: tuple
    produced: dict[int, tuple[int, ...]] = field(default_factory=dict)

    def failures(self, ids=None) -> list[int]:
        """Rows (among ``ids``, default all) whose round trip fails, in id order."""
        rows = range(len(self.status)) if ids is None else sorted(ids)
        return [i for i in rows if self.status[i] is False]

    def counts(self, ids=None) -> dict[str, int]:
        """How many rows (among ``ids``) round-trip, fail, are special, or have no token."""
        rows = range(len(self.status)) if ids is None else ids
        values = [self.status[i] for i in rows]
        return {"total": len(values), "round_trip": values.count(True), "not_round_trip": values.count(False),
                "special": sum(v == "special" for v in values), "no_token": values.count(None)}

    def record(self, i: int) -> dict:
        """The JSON fields of row ``i``: ``round_trip`` and, when it fails, ``round_trip_ids``."""
        value = self.status[i]
        if value is None:
            return {}
        return {"round_trip": value, **({"round_trip_ids": list(self.produced.get(i, ()))} if value is False else {})}


@dataclass(frozen=True, eq=False)
class TokenResult:
    """The verdict on one token and the evidence behind it.

    Attributes
    ----------
    id : int
        Row of the output layer.
    token : str or None
        Its display name, when names are known.
    verdict : str
        ``"argmaxable"``, ``"unargmaxable"``, ``"undecided"`` or
        ``"practically_unreachable"`` (argmaxable, with a witness, but its
        best margin is below what the logits' precision resolves).
    margin : float
        See :data:`MARGIN_DOC`; NaN when undecided.
    stage : str
        What decided it: ``"tie"``, ``"dominated"``, ``"screen"``, ``"batched"`` (the batched
        phase's shared-basis certificates, or a witness along the separating direction its search
        found, :mod:`argmaxcheck.engine.batched`), ``"cluster"``
        (a cluster of near-duplicates, :mod:`argmaxcheck.engine.clusters`), ``"polish"`` (a near
        miss of the screen moved into its cell, :mod:`argmaxcheck.engine.polish`), ``"exact"``.
    witness : ndarray or None
        Argmaxable: a point of the domain where the token strictly wins.
    support, weights : ndarray or None
        Unargmaxable: token ids and convex weights (summing to 1) of the
        competitors whose average beats the token everywhere on the domain.
    tie_with : int or None
        For duplicated rows: another row with identical weights and bias.
    check : str
        How the certificate was verified.
    reason : str
        For undecided tokens: why no certificate could be checked.
    best_margin, threshold : float
        Practically unreachable tokens: the token's best margin over the
        domain, and the precision threshold it falls below (NaN otherwise). ``best_margin``
        is an upper bound on the best margin: within 1e-6 of it when solved one token at a time,
        else the upper end of the bracket below.
    bracket_lower, bracket_upper : float
        Narrow winners decided without solving for their best margin
        (:mod:`argmaxcheck.engine.narrow`): a checked gap at the witness and a checked upper
        bound on the best margin (NaN when not found); ``threshold`` is then the precision
        threshold at the witness. NaN otherwise.
    max_probability, max_probability_upper : float
        Unreachable tokens on bounded domains: a probability the token
        reaches at some input, and a bound no input exceeds
        (:mod:`argmaxcheck.probability`); NaN when not computed.
    """

    id: int
    token: str | None
    verdict: str
    margin: float
    stage: str
    witness: np.ndarray | None = None
    support: np.ndarray | None = None
    weights: np.ndarray | None = None
    tie_with: int | None = None
    check: str = ""
    reason: str = ""
    best_margin: float = np.nan
    threshold: float = np.nan
    bracket_lower: float = np.nan
    bracket_upper: float = np.nan
    max_probability: float = np.nan
    max_probability_upper: float = np.nan

    def to_dict(self, names: list[str] | None = None, special: frozenset[int] = frozenset(),
                explanation: str | None = None, display: list[str] | None = None,
                kinds: dict[int, str] | None = None) -> dict:
        """JSON-ready record (the witness vector is left to the certificate file); ``display`` and
        ``kinds`` add the token's decoded text and its kind (:class:`AuditReport`)."""
        out = {"id": self.id, "token": self.token, **({"special": True} if self.id in special else {}),
               **({"display": display[self.id]} if display else {}),
               **({"kind": kinds[self.id]} if kinds and self.id in kinds else {}),
               "verdict": self.verdict,
               "margin": None if np.isnan(self.margin) else float(self.margin), "stage": self.stage}
        if explanation is not None:
            out["explanation"] = explanation
        if self.support is not None:
            order = np.argsort(-self.weights)
            out["certificate"] = {
                "support_size": int(self.support.size),
                "check": self.check,
                "top": [{"id": int(self.support[k]), "weight": float(self.weights[k]),
                         **({"token": names[int(self.support[k])]} if names else {})}
                        for k in order[:5]],
            }
        if self.tie_with is not None:
            out["tie_with"] = int(self.tie_with)
        if np.isfinite(self.best_margin):
            out["best_margin"] = float(self.best_margin)
            out["threshold"] = float(self.threshold)
        if np.isfinite(self.bracket_lower):
            out["best_margin_bracket"] = [float(self.bracket_lower),
                                          float(self.bracket_upper) if np.isfinite(self.bracket_upper) else None]
            out["threshold"] = float(self.threshold)
        if np.isfinite(self.max_probability):
            out["max_probability"] = {"reached": float(self.max_probability),
                                      "upper_bound": float(self.max_probability_upper)}
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass(eq=False)
class AuditReport:
    """Everything an audit found. The CLI prints this; nothing it prints is missing here.

    ``tokens`` holds one record per audited token, in id order; ``stats`` what each stage did
    (:mod:`argmaxcheck.report.stats`). ``names`` are
    the raw pieces as stored, ``display`` (when the source has a tokenizer) the
    text each row decodes to, and ``token_kinds`` the rows that are not
    ordinary text (``control``, ``byte``, ``unused``...; :mod:`argmaxcheck.sources.tokens`).
    """

    num_classes: int
    dim: int
    domain: dict
    has_bias: bool
    source_dtype: str
    seconds: float
    tokens: list[TokenResult]
    names: list[str] | None = None
    stats: AuditStats = field(default_factory=AuditStats)
    source: str = ""
    checkpoint: dict | None = None  # which tensors and which folded domain, for checkpoint audits
    special: frozenset[int] = frozenset()
    display: list[str] | None = None
    token_kinds: dict[int, str] = field(default_factory=dict)
    device: str | None = None  # where the heavy products ran ("numpy (cpu)", "torch (cuda)")
    device_note: str | None = None  # a move to smaller blocks or to the CPU after a device out-of-memory
    precision: str | None = None  # the dtype the practical label took the logits to be computed in
    # The tokenizer's round trip of every row (None: the source has no tokenizer), attached after the audit
    # like ``source`` and ``checkpoint``; bias raises for added tokens ({id: (necessary_above, sufficient)}).
    round_trip: RoundTrip | None = None
    bias_raise: dict[int, tuple] = field(default_factory=dict)

    @property
    def timings(self) -> dict:
        """The flat ``timings`` object of schema 1.0, derived from :attr:`stats` and the device fields."""
        extra = {k: getattr(self, k) for k in ("device", "device_note", "precision") if getattr(self, k) is not None}
        return {**self.stats.timings(), **extra}

    def ids(self, verdict: str) -> list[int]:
        return [t.id for t in self.tokens if t.verdict == verdict]

    @property
    def unargmaxable(self) -> list[int]:
        return self.ids(UNARGMAXABLE)

    @property
    def undecided(self) -> list[int]:
        return self.ids(UNDECIDED)

    @property
    def practically_unreachable(self) -> list[int]:
        return self.ids(PRACTICAL)

    @property
    def not_round_trip(self) -> list[int] | None:
        """Audited rows whose token the tokenizer does not give back from its own text (None: no tokenizer)."""
        if self.round_trip is None:
            return None
        return self.round_trip.failures(t.id for t in self.tokens)

    @property
    def all_argmaxable(self) -> bool:
        return all(t.verdict == ARGMAXABLE for t in self.tokens)

    def summary(self) -> dict:
        counts = {v: 0 for v in VERDICTS}
        for t in self.tokens:
            counts[t.verdict] += 1
        return {"source": self.source, "num_classes": self.num_classes, "dim": self.dim, "domain": self.domain,
                "bias": self.has_bias, "source_dtype": self.source_dtype, "audited": len(self.tokens),
                "audited_ids": compact_ranges(t.id for t in self.tokens), **counts,
                "not_round_trip": None if self.round_trip is None else len(self.not_round_trip),
                "seconds": round(self.seconds, 4)}

    def label(self, i: int) -> str:
        """How row ``i`` is named in explanations: its escaped decoded text (else its piece), else ``#id``."""
        if self.display:
            return escape_token(self.display[i])
        return escape_token(self.names[i]) if self.names else f"#{i}"

    def token_text(self, i: int) -> str:
        """Row ``i`` for a report's token column: the decoded text, the raw piece when it differs,
        and the kind of a row that is not ordinary text (``'<|im_end|>' [control]``)."""
        if not self.names:
            return ""
        text = escape_token(self.names[i])
        if self.display and self.display[i] != self.names[i]:
            text = f"{escape_token(self.display[i])} (raw {text})"
        kind = self.token_kinds.get(i) or ("special" if i in self.special else None)
        return text + (f" [{kind}]" if kind else "")

    def explain(self, t: TokenResult, terms: int = 4, style: Style = PLAIN) -> str:
        """One sentence saying why a token got its verdict, drawn from its certificate.

        ``style`` renders the sentence for one output: our words through
        ``style.text``, token names (strings from the model file) through
        ``style.literal``. The default is plain printable text.
        """
        text, lit = style.text, style.literal
        if t.tie_with is not None:
            return (text(f"tie: identical weights and bias to row {t.tie_with} (") + lit(self.label(t.tie_with))
                    + text(")"))
        if t.verdict == PRACTICAL:
            return text(f"wins by at most {t.best_margin:.3g}, below the {t.threshold:.3g} that"
                        f" {self.precision or 'the'} logits can resolve there")
        if t.verdict == UNDECIDED:
            return text(t.reason)
        if t.verdict == ARGMAXABLE:
            return text(f"wins by {t.margin:.3g} at its witness")
        if t.stage == "dominated":
            j = int(t.support[0])
            return text(f"dominated: same weights as row {j} (") + lit(self.label(j)) + text("), higher bias")
        order = np.argsort(-t.weights)
        # Weights that round to 0.00 say nothing in a sentence; they stay in the "more".
        shown = [k for k in order[:terms] if t.weights[k] >= 0.005]
        if not shown:  # a deep certificate spreads its weight over thousands of rows
            top = int(order[0])
            return (lit(self.label(t.id)) + text(f" is beaten everywhere by a weighted average of {len(order)} rows"
                                                 f" (largest weight {t.weights[top]:.2g}, on ")
                    + lit(self.label(int(t.support[top]))) + text(")"))
        parts = [text(f"{t.weights[k]:.2f}·") + lit(self.label(int(t.support[k]))) for k in shown]
        more = text(f" + {len(order) - len(shown)} more") if len(order) > len(shown) else ""
        return (lit(self.label(t.id)) + text(" is beaten everywhere by ")
                + text(" + ").join(parts) + more)

    def domain_text(self) -> str:
        """The audited domain and why it is the right one, in words (printable)."""
        return f"{describe_domain(self.domain)} ({printable(self.domain_reason())})"

    def domain_reason(self) -> str:
        """Why the audit used its domain: the source's reason, the user's choice, or R^d by default."""
        info = self.checkpoint or {}
        if info.get("audited") == "raw head":
            return "chosen with --domain; the head as stored, its final norm not folded"
        if info.get("domain"):
            why = str(info["domain"])
            if info.get("audited") == "folded final norm" and info.get("norm_weight"):
                why += f"; final norm {info['norm_weight']} folded into the head"
            return why
        if self.domain.get("kind") == "unbounded":
            return "R^d: no final norm given"
        return "chosen with --domain (or the domain argument)"

    def to_dict(self, gate: dict | None = None) -> dict:
        """The JSON report (schema: docs/report-schema.md)."""
        failing = set(self.not_round_trip or ())
        return {
            "schema_version": SCHEMA_VERSION,
            "summary": self.summary(),
            "margin": MARGIN_DOC,
            "unargmaxable": sorted(self.unargmaxable),
            "practically_unreachable": self.practically_unreachable,
            "undecided": self.undecided,
            **({"not_round_trip": sorted(failing)} if self.round_trip is not None else {}),
            "tokens": [self.token_record(t) for t in self.tokens if t.verdict != ARGMAXABLE or t.id in failing
                       or self.token_kinds.get(t.id) in ADDED_KINDS],
            "stages": self.stats.to_list(),
            "timings": self.timings,
            **({"gate": gate} if gate is not None else {}),
            **({"checkpoint": self.checkpoint} if self.checkpoint else {}),
        }

    def token_record(self, t: TokenResult) -> dict:
        """A token's JSON record: verdict and certificate, its round trip when known, and for an added token
        on a head with a bias the bracket on the smallest bias raise that makes it reachable."""
        out = t.to_dict(self.names, self.special, self.explain(t), self.display, self.token_kinds)
        if self.round_trip is not None:
            out.update(self.round_trip.record(t.id))
        if t.id in self.bias_raise:
            lower, sufficient = self.bias_raise[t.id]
            out["bias_raise"] = {"necessary_above": lower, "sufficient": sufficient}
        return out

    def save_certificates(self, path: str | Path) -> None:
        """Write every certificate to an ``.npz`` that numpy alone can re-check (README)."""
        ids = np.array([t.id for t in self.tokens], dtype=np.int64)
        verdict = np.array([{ARGMAXABLE: 1, PRACTICAL: 2, UNARGMAXABLE: 0}.get(t.verdict, -1) for t in self.tokens],
                           dtype=np.int8)
        margin = np.array([t.margin for t in self.tokens], dtype=np.float64)
        arg = [t for t in self.tokens if t.witness is not None]
        cert = [t for t in self.tokens if t.support is not None]
        ptr = np.zeros(len(cert) + 1, dtype=np.int64)
        ptr[1:] = np.cumsum([t.support.size for t in cert])
        dom = {f"domain_{k}": np.asarray(v) for k, v in _domain_arrays(self.domain, self.dim).items()}
        np.savez_compressed(
            path,
            ids=ids, verdict=verdict, margin=margin,
            witness_ids=np.array([t.id for t in arg], dtype=np.int64),
            witness=np.array([t.witness for t in arg], dtype=np.float64).reshape(len(arg), self.dim),
            cert_ids=np.array([t.id for t in cert], dtype=np.int64),
            cert_ptr=ptr,
            cert_support=np.concatenate([t.support for t in cert]).astype(np.int64) if cert
            else np.zeros(0, np.int64),
            cert_weights=np.concatenate([t.weights for t in cert]) if cert else np.zeros(0),
            **dom,
        )


def _domain_arrays(domain: dict, dim: int) -> dict:
    kind = domain["kind"]
    out = {"kind": kind}
    if kind == "box":
        out["lower"] = np.broadcast_to(np.asarray(domain["lower"], dtype=np.float64), (dim,))
        out["upper"] = np.broadcast_to(np.asarray(domain["upper"], dtype=np.float64), (dim,))
    elif kind == "ball":
        out["center"] = np.broadcast_to(np.asarray(domain["center"], dtype=np.float64), (dim,))
        out["radius"] = domain["radius"]
    return out


def describe_domain(domain: dict) -> str:
    """A domain summary (``Domain.describe()``) in words: ``ball |z| <= 27.7``, ``box 0 <= z_k <= inf``, ``R^d``."""
    kind = domain.get("kind")
    if kind == "ball":
        center = domain.get("center", 0.0)
        if isinstance(center, list):
            return f"ball |z - c| <= {domain['radius']:.4g} (c given per coordinate)"
        return f"ball |z{'' if center == 0 else f' - {center:g}'}| <= {domain['radius']:.4g}"
    if kind == "box":
        lower, upper = domain.get("lower"), domain.get("upper")
        if isinstance(lower, list) or isinstance(upper, list):
            def span(v):
                return f"{v:g}" if not isinstance(v, list) else f"[{min(v):g}, {max(v):g}]"
            return f"box, bounds per coordinate (lower in {span(lower)}, upper in {span(upper)})"
        return f"box {lower:g} <= z_k <= {upper:g} for every k"
    return "unbounded: all of R^d"
