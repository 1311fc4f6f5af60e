"""One token in depth: its verdict, the certificate in words, its rivals, and what would fix it.

For a flagged token p, the question a trainer asks is how far its bias is
from making it reachable. Raising ``b_p`` by ``delta`` makes p win somewhere
exactly when ``delta > -t*``, where ``t* = max_x min_j (s_p(x) - s_j(x))`` is
its best raw margin over the domain (a linear program on boxes and R^d, an
SOCP on balls). The answer is reported as a bracket:

* ``bias_increase``: raising by more than this is *verified* sufficient: at
  the returned point the token's certified gap is ``-bias_increase``;
* ``bias_increase_lower``: raising by this much or less cannot work (the
  weak-duality bound of the solver's row weights; on unbounded domains the
  LP's optimum, not interval-certified).

A bias-free layer on a domain containing 0 needs only a positive raise: at
x = 0 every logit is 0 and the raise breaks the tie.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linprog

from ..domains import Unbounded
from ..layer import OutputLayer
from ..report.model import ADDED_KINDS, ARGMAXABLE, PRACTICAL, UNARGMAXABLE, AuditReport, TokenResult
from . import certify
from .audit import AuditOptions, audit
from .competitors import Competitors
from .formulation import most_violated
from .precision import best_margin, margin_domain


@dataclass(frozen=True)
class Explanation:
    """Everything ``argmaxcheck explain`` prints, as data."""

    result: TokenResult
    sentence: str
    point_kind: str  # "witness" or "closest point": where `rivals` were scored
    rivals: list[dict] = field(default_factory=list)  # {id, token, gap}: s_j(x) - s_p(x), best first
    bias_increase: float | None = None
    bias_increase_lower: float | None = None
    bias_note: str = ""

    def to_dict(self, report: AuditReport) -> dict:
        token = self.result.to_dict(report.names, report.special, self.sentence, report.display, report.token_kinds)
        if report.round_trip is not None:
            token.update(report.round_trip.record(self.result.id))
        return {"token": token,
                "point": self.point_kind, "rivals": self.rivals,
                "bias_increase": {"sufficient": self.bias_increase, "necessary_above": self.bias_increase_lower,
                                  "note": self.bias_note}}


def explain_token(layer: OutputLayer, domain, token: int, options: AuditOptions | None = None
                  ) -> tuple[AuditReport, Explanation]:
    """Audit one token of ``layer`` on ``domain`` and explain the verdict."""
    report = audit(layer, domain=domain, tokens=[token], options=options)
    result = report.tokens[0]
    domain = (domain if domain is not None else Unbounded()).resolve(layer.dim)
    comp = Competitors(layer.weight, layer.bias)
    if result.verdict == ARGMAXABLE:
        return report, Explanation(result, report.explain(result), "witness",
                                   _rivals(comp, report, token, result.witness))
    lower, sufficient, x, note = bias_raise(comp, token, domain, result)
    rivals = _rivals(comp, report, token, x) if x is not None else []
    return report, Explanation(result, report.explain(result), "closest point", rivals, sufficient, lower, note)


def bias_raise(comp: Competitors, token: int, domain, result: TokenResult):
    """(necessary-above bound, verified sufficient raise, point, note) for a flagged token's bias:
    the bracket ``explain`` prints. ``domain`` is resolved; ``result`` is the token's audit record."""
    lower, sufficient, x, note = _bias_increase(comp, token, domain, result)
    if result.verdict == PRACTICAL and sufficient is not None:
        # Already argmaxable: what it needs is a lead the logits' precision can resolve.
        lower, sufficient = lower + result.threshold, sufficient + result.threshold
        note = f"to lead by the {result.threshold:.3g} precision threshold; {note}"
    elif result.verdict == UNARGMAXABLE and lower is not None:
        lower = max(lower, -result.margin) + 0.0  # the checked certificate proves best margin <= margin
    if lower is not None:
        # A flagged token gains nothing from lowering its bias: the bracket starts at 0 at least
        # (a loose dual bound on the best margin can otherwise push it below).
        lower = max(lower, 0.0)
    return lower, sufficient, x, note


def added_token_bias_raises(layer: OutputLayer, domain, report: AuditReport,
                            kinds: frozenset[str] = ADDED_KINDS) -> dict[int, tuple]:
    """For each audited token of these kinds that is flagged, on a head with a bias: the bracket
    (necessary-above, sufficient) on the smallest raise of its bias that makes it reachable."""
    if layer.bias is None:
        return {}
    flagged = [t for t in report.tokens if t.verdict in (UNARGMAXABLE, PRACTICAL)
               and layer.token_kinds.get(t.id) in kinds]
    if not flagged:
        return {}
    domain = (domain if domain is not None else Unbounded()).resolve(layer.dim)
    comp = Competitors(layer.weight, layer.bias)
    out = {}
    for t in flagged:
        lower, sufficient, _, _ = bias_raise(comp, t.id, domain, t)
        out[t.id] = (None if lower is None else float(lower), None if sufficient is None else float(sufficient))
    return out


def _rivals(comp: Competitors, report: AuditReport, p: int, x: np.ndarray, count: int = 5) -> list[dict]:
    s = comp.scores(x)
    gap = s - s[p]
    gap[p] = -np.inf
    top = np.argsort(-gap)[:count]
    return [{"id": int(j), "token": report.names[j] if report.names else None, "gap": float(gap[j])} for j in top]


def _bias_increase(comp: Competitors, p: int, domain, result: TokenResult):
    """(necessary-above bound, verified sufficient raise, point, note) for a flagged token."""
    if comp.bias is None and certify.in_domain(np.zeros(comp.weight.shape[1]), domain):
        return 0.0, 0.0, None, "any positive raise: at x = 0 every logit is 0, and the raise breaks the tie"
    bounded = margin_domain(domain, comp.bias is not None)
    if bounded is not None:
        start = result.witness if result.witness is not None else bounded.anchor()
        best = best_margin(comp, p, bounded, start, cap=1e6)
        if best is None:
            return None, None, None, "the best-margin solve did not converge"
        return -best.value, -best.gap, best.x, "bracket from the solver's dual bound and a checked point"
    found = _best_margin_lp(comp, p, domain, result.support)
    if found is None:
        return None, None, None, ("the linear program for the best margin did not solve within its rounds, so no"
                                  " bias increase is given")
    value, x = found
    gap = certify.check_witness(comp.weight, comp.bias, p, x, domain, comp.norms)
    return -value, -gap, x, "lower value is the LP optimum (float64, not interval-certified)"


def _best_margin_lp(comp: Competitors, p: int, domain, support, max_rounds: int = 30):
    """max t s.t. (w_j - w_p).x + t <= b_p - b_j over an (unbounded) box or R^d, by row generation."""
    weight, bias = comp.weight, comp.bias
    m, d = weight.shape
    lower, upper = domain.coordinate_bounds()  # an LP-family domain (a ball is bounded: never here)
    start = np.clip(np.zeros(d), lower, upper)
    s0 = comp.scores(start)
    gaps0 = s0 - s0[p]
    gaps0[p] = -np.inf
    rows = np.union1d(np.argsort(-gaps0)[: min(m - 1, 2 * d + 10)], support if support is not None else [])
    rows = rows[rows != p].astype(np.int64)
    in_working = np.zeros(m, dtype=bool)
    in_working[rows] = True
    bounds = [(None if np.isinf(lo) else lo, None if np.isinf(hi) else hi)
              for lo, hi in zip(lower, upper, strict=True)] + [(None, None)]
    for _ in range(max_rounds):
        a = np.hstack([weight[rows] - weight[p], np.ones((rows.size, 1))])
        c = bias[p] - bias[rows]
        res = linprog(np.append(np.zeros(d), -1.0), A_ub=a, b_ub=c, bounds=bounds, method="highs")
        if res.status != 0:
            return None
        x, t = res.x[:d], float(res.x[d])
        s = comp.scores(x)
        extra = most_violated(s - s[p] + t, in_working, p, max(d, 50))
        if extra.size == 0:
            return t, x
        rows = np.concatenate([rows, extra])
        in_working[extra] = True
    return None


def render_explanation(report: AuditReport, exp: Explanation) -> str:
    """The explanation as text (what ``argmaxcheck explain`` prints)."""
    t = exp.result
    lines = [f"token {t.id} {report.token_text(t.id)}: {t.verdict.replace('_', ' ')}",
             f"why: {exp.sentence}",
             f"margin: {'n/a' if np.isnan(t.margin) else f'{t.margin:.6g}'}"]
    if np.isfinite(t.max_probability):
        lines.append(f"highest probability it can reach: {t.max_probability:.4g}"
                     f" (no input gives more than {t.max_probability_upper:.4g})")
    if exp.rivals:
        lines.append(f"strongest competitors at its {exp.point_kind} (logit minus its own):")
        lines += [f"  #{r['id']} {report.token_text(r['id'])}  {r['gap']:+.6g}" for r in exp.rivals]
    if t.verdict != ARGMAXABLE and (exp.bias_increase is not None or exp.bias_note):
        if exp.bias_increase is not None:
            lines.append(f"smallest bias increase that makes it reachable: between {exp.bias_increase_lower:.6g}"
                         f" and {exp.bias_increase:.6g} (raising it by more than {exp.bias_increase:.6g} works)")
        lines.append(f"  ({exp.bias_note})")
    return "\n".join(lines) + "\n"
