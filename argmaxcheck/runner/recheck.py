"""Check every chunk's proofs again in the process that writes the report, and decide again what fails.

A chunk report that comes from a resume journal or from a Ray worker is a
cache, not a proof: its file may be damaged, forged by someone who knows the
format (hashes included), or written by a worker whose arithmetic we did not
watch. :func:`recheck` therefore checks each of its verdicts again here, on the
layer *as given* (its own units; the engine's power-of-two scaling changes no
witness or certificate) and the resolved domain:

* ``argmaxable`` and ``practically_unreachable``: the witness lies in the
  domain and its certified gap is > 0: one float32 product of the layer with a
  block of witnesses, with a rigorous bound on its rounding, and for the few
  that float32 cannot settle :func:`argmaxcheck.engine.certify.check_witness`
  in float64 (one matrix-vector product each);
* ``unargmaxable`` (``tie`` and ``dominated`` included):
  :func:`argmaxcheck.engine.certify.check_certificate` on the certificate's
  support, on the domain or else on a domain that contains it (for a
  bias-free layer the cone the domain generates, where the engine proves its
  certificates; R^d), and for a tie the two rows must be identical (weights
  and bias);
* ``undecided``: claims nothing and carries no proof, so it is kept as it is
  (deciding it again would make a resumed run slower than the run it resumes);
* anything else (an unknown verdict, a missing or misshapen witness or
  certificate, a token of another id) fails.

Tokens that fail are decided again by the engine on exactly those ids, and
one note per chunk says how many and which chunk. The margins, brackets and
practical labels of the tokens that pass are kept as stored: they are
measurements, not proofs, and the verdict does not depend on them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from .._rounding import U32, U64
from ..domains import Domain, Unbounded
from ..engine import AuditOptions, audit, certify
from ..layer import OutputLayer
from ..report.model import ARGMAXABLE, PRACTICAL, UNARGMAXABLE, UNDECIDED, AuditReport, TokenResult
from ..report.stats import StageStats

_SCORES_BUDGET = 1 << 28  # bytes of float64 scores per block of witnesses


def failing_tokens(report: AuditReport, layer: OutputLayer, domain: Domain) -> list[int]:
    """Positions in ``report.tokens`` whose verdict is not proven by the evidence it carries (see the module)."""
    domain = domain.resolve(layer.dim)
    weight, bias = layer.weight, layer.bias
    failed: list[int] = []
    witnessed: list[int] = []
    for k, t in enumerate(report.tokens):
        if not isinstance(t.id, (int, np.integer)) or not 0 <= int(t.id) < layer.num_classes:
            failed.append(k)
        elif t.verdict in (ARGMAXABLE, PRACTICAL):
            w = t.witness
            if isinstance(w, np.ndarray) and w.shape == (layer.dim,) and w.dtype.kind == "f":
                witnessed.append(k)
            else:
                failed.append(k)
        elif t.verdict == UNARGMAXABLE:
            if not _certificate_holds(t, weight, bias, domain):
                failed.append(k)
        elif t.verdict != UNDECIDED:
            failed.append(k)
    if witnessed:
        row_norms = np.linalg.norm(weight, axis=1)
        row_norm = float(row_norms.max()) * (1 + 4 * U64)
        weight32 = weight.astype(np.float32)
        step = int(np.clip(_SCORES_BUDGET // (8 * max(1, layer.num_classes)), 8, 256))
        for start in range(0, len(witnessed), step):
            block = witnessed[start:start + step]
            tokens = [report.tokens[k] for k in block]
            ok = _witnesses_hold32(tokens, weight32, bias, domain, row_norm)
            for k, t, good in zip(block, tokens, ok, strict=True):
                # Too close for float32 (or overflowed there): the float64 check, one product.
                if not good and not certify.check_witness(weight, bias, int(t.id), t.witness, domain, row_norms) > 0:
                    failed.append(k)
    return sorted(failed)


def _witnesses_hold32(tokens: list[TokenResult], weight32, bias, domain, row_norm: float) -> np.ndarray:
    """A float32 pass of :func:`certify.check_witness` over a block of witnesses (one product with the layer).

    ``True`` is a proof; ``False`` only means float32 could not tell. The scores are
    ``fl32(fl32(W) fl32(x))``: the bound covers rounding W and x to float32 (the latter by
    ``|W| |fl32(x) - x|``), the float32 product and adding the bias in float64.
    """
    x = np.stack([np.asarray(t.witness, np.float64) for t in tokens], axis=1)  # (d, B)
    ok = np.isfinite(x).all(axis=0)
    if ok.any():
        ok &= np.asarray(domain.certainly_contains(np.where(np.isfinite(x), x, 0.0)), bool).reshape(-1)
    if not ok.any():
        return ok
    x = np.where(ok[None, :], x, 0.0)
    with np.errstate(invalid="ignore", over="ignore"):
        x32 = x.astype(np.float32)
        ok &= np.isfinite(x32).all(axis=0)
        x32[:, ~ok] = 0.0
        shift = np.linalg.norm(x32.astype(np.float64) - x, axis=0) * (1 + 4 * U64)
        scores = (weight32 @ x32).astype(np.float64)
        if bias is not None:
            scores += bias[:, None]
        norms = np.linalg.norm(x32.astype(np.float64), axis=0) * (1 + 4 * U64)
        err = (certify.score_error_bound(norms, row_norm, weight32.shape[1], U32, cast_unit=U32)
               + row_norm * shift * (1 + 4 * U64) + 4 * U64 * np.maximum(scores.max(axis=0), -scores.min(axis=0)))
    rows = np.array([int(t.id) for t in tokens])
    gaps = certify.witness_gap_bounds(scores, rows, err)
    return ok & (gaps > 0)


def _certificate_holds(t: TokenResult, weight, bias, domain) -> bool:
    support, weights = t.support, t.weights
    if not (isinstance(support, np.ndarray) and isinstance(weights, np.ndarray)) or support.ndim != 1 \
            or support.shape != weights.shape or support.size == 0 or support.dtype.kind not in "iu" \
            or weights.dtype.kind != "f":
        return False
    if t.tie_with is not None:
        j = int(t.tie_with)
        if not 0 <= j < weight.shape[0] or j == t.id or not np.array_equal(weight[j], weight[t.id]) or \
                (bias is not None and bias[j] != bias[t.id]):
            return False
    # A certificate that holds on a larger domain holds on this one. The engine proves a bias-free
    # layer's certificates on the cone its domain generates (R^d for a box around 0, an orthant for
    # a box from 0), with exact equalities whose weights are only enclosed, which a closed box's
    # float check alone cannot see; and R^d contains every domain.
    larger = [domain]
    cone = domain.scale_free_cone() if bias is None else None
    if cone is not None:
        larger.append(cone)
    if not domain.whole_space:
        larger.append(Unbounded())
    return any(certify.check_certificate(weight, bias, int(t.id), support, weights, d).ok for d in larger)


def recheck(report: AuditReport, layer: OutputLayer, domain: Domain, options: AuditOptions,
            log: Callable[[str], None], what: str) -> AuditReport:
    """``report`` (one chunk, named ``what`` in the note) with every token that fails its check decided again.

    The report's layer and domain fields are set from ``layer`` and ``domain``
    (never from what a journal claims). Returns a new report; the input is not changed.
    """
    started = time.perf_counter()
    domain = domain.resolve(layer.dim)
    failed = failing_tokens(report, layer, domain)
    tokens = list(report.tokens)
    seconds = report.seconds
    if failed:
        ids = sorted({int(tokens[k].id) for k in failed if 0 <= int(tokens[k].id) < layer.num_classes})
        log(f"{what}: {len(failed)} token(s) whose witness or certificate does not check out here"
            f" (ids {_span(ids)}); deciding them again")
        if ids:
            fresh = audit(layer, domain=domain, tokens=ids, options=options)
            seconds += fresh.seconds
            by_id = {t.id: t for t in fresh.tokens}
            redo = set(failed)
            tokens = [by_id.get(int(t.id), t) if k in redo else t for k, t in enumerate(tokens)]
    # Its own record: how many proofs were checked here, and how many had to be decided again.
    record = StageStats("recheck", len(tokens), len(failed), time.perf_counter() - started)
    stats = replace(report.stats, stages=(*report.stats.stages, record))
    return replace(report, num_classes=layer.num_classes, dim=layer.dim, domain=domain.describe(),
                   has_bias=layer.bias is not None, source_dtype=layer.source_dtype, seconds=seconds, tokens=tokens,
                   names=layer.tokens, stats=stats, special=layer.special, display=layer.display,
                   token_kinds=dict(layer.token_kinds))


def _span(ids: list[int]) -> str:
    shown = ", ".join(map(str, ids[:8]))
    return shown + (f" and {len(ids) - 8} more" if len(ids) > 8 else "")
