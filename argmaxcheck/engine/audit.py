"""The audit: ties -> screen -> exact step -> report, every verdict independently checked."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from ..domains import Domain, Unbounded
from ..errors import InputError
from ..layer import OutputLayer
from ..report.model import ARGMAXABLE, PRACTICAL, UNARGMAXABLE, UNDECIDED, AuditReport, TokenResult
from . import certify
from ._fingerprint import row_fingerprints
from .backend import make_backend
from .batched import interior_certificates
from .block_exact import solve_blocks
from .exact import Competitors, ExactOptions, seed_points, should_seed, solve_token
from .precision import best_margin, margin_domain, threshold, unit_roundoff
from .probability import bounded as probability_bounded
from .probability import max_probability
from .progress import Progress, as_progress
from .screen import screen


@dataclass(frozen=True)
class AuditOptions:
    """How to run an audit.

    Attributes
    ----------
    exact_all : bool
        Skip the screen and run the exact step for every token (reference mode).
    block_bytes : int
        Memory for one block of screening scores (float32, competitors x tokens).
    exact : ExactOptions
        Tuning of the constraint-generation loop.
    practical : bool
        Label argmaxable tokens whose best margin is below the logits'
        precision "practically_unreachable" (bounded domains; see
        :mod:`argmaxcheck.precision`).
    precision : str or None
        The dtype the logits are computed in (``float32``, ``float16``,
        ``bfloat16``, ``float64``); default: the dtype the weights came in.
    probability_seconds : float
        Time budget for bounding the highest probability each unreachable
        token can reach (bounded domains; :mod:`argmaxcheck.probability`).
        The audit spends at most this, and at most a quarter of the time the
        verdicts took (but 2 s at least): the brackets are a report's extra,
        not its verdicts. 0 skips it; tokens left when the budget runs out get
        no bounds.
    device : str
        Where the screen's float32 products and guesses, and the batched phase's search for
        weights, run (:mod:`argmaxcheck.engine.backend`); certificates are always checked on
        the CPU in float64:
        ``auto`` (CUDA through torch when present, else numpy), ``cpu`` (numpy),
        ``cuda``, or ``torch-cpu`` (torch on the CPU, for tests).
    batched : bool
        On R^d, try the batched phase (:mod:`argmaxcheck.engine.batched`) on the tokens the
        screen left, before the per-token solver: shared-basis certificates for rows deep
        inside their competitors' hull. False sends them all to the exact step.
    """

    exact_all: bool = False
    block_bytes: int = 128 << 20
    exact: ExactOptions = field(default_factory=ExactOptions)
    practical: bool = True
    precision: str | None = None
    probability_seconds: float = 30.0
    device: str = "auto"
    batched: bool = True
    block_exact: bool = True  # the exact step's blocks of tokens first (engine.block_exact); off in exact_all


def audit(weight, bias=None, domain: Domain | None = None, tokens: Sequence[int] | None = None, *,
          names: Sequence[str] | None = None, options: AuditOptions | None = None,
          progress: Progress | Callable[[int], None] | None = None) -> AuditReport:
    """Decide, for every token, whether some input in ``domain`` makes it the strict argmax.

    Parameters
    ----------
    weight : array-like of shape (num_classes, dim), or OutputLayer
        Output-layer weights (numpy, torch or nested lists; any float dtype).
    bias : array-like of shape (num_classes,), optional
    domain : Unbounded, Box or Ball, default Unbounded()
    tokens : sequence of int, optional
        Audit only these rows (they still compete against every row).
    names : sequence of str, optional
        Display names of the rows.
    options : AuditOptions, optional
    progress : Progress or callable, optional
        An object with ``stage(name, total)`` and ``advance(n)`` (see
        :mod:`argmaxcheck.engine.progress`), told of each stage and of every
        block of work done in it; or a callable given each ``n``.

    Returns
    -------
    AuditReport
        One :class:`TokenResult` per audited token; every argmaxable verdict
        carries a checked witness and every unargmaxable one a checked
        convex certificate. Tokens neither could be proven for are ``undecided``.

    Raises
    ------
    InputError
        For malformed arrays, domains or token lists (one-line message).
    """
    started = time.perf_counter()
    original, own_domain = _as_layer(weight, bias, names)
    options = options or AuditOptions()
    domain = (domain if domain is not None else own_domain).resolve(original.dim)
    targets = _targets(tokens, original.num_classes)
    if original.num_classes < 2:
        raise InputError(f"the layer has {original.num_classes} row: a softmax over one class always picks it,"
                         " so there is nothing to audit")
    # Every stage works on the layer scaled by a power of two to max |w|, |b| in [0.5, 1): exact, it
    # changes no verdict, witness or certificate, and keeps products clear of overflow and underflow.
    layer, exponent = _normalised(original)
    progress = as_progress(progress)
    timings: dict[str, float] = {}

    results: dict[int, TokenResult] = {}
    reps, rep_of, tie_partner = _group_identical_rows(layer)
    names_list = layer.tokens
    name = (lambda i: names_list[i]) if names_list else (lambda i: None)

    # Rows with identical weights: all but the best-biased one lose everywhere, and
    # equal bias means an exact tie. Their certificate is a single competitor.
    grouped = [i for i in targets if rep_of[i] != i or i in tie_partner]
    progress.stage("identical rows", len(grouped))
    for i in grouped:
        r = rep_of[i]
        partner = tie_partner.get(i)
        other = partner if partner is not None else r
        check = certify.check_certificate(layer.weight, layer.bias, i, np.array([other]), np.array([1.0]),
                                          domain)
        stage = "tie" if partner is not None else "dominated"
        if check.ok:
            results[i] = TokenResult(i, name(i), UNARGMAXABLE, check.bound, stage,
                                     support=np.array([other]), weights=np.array([1.0]),
                                     tie_with=partner, check=check.method)
        else:  # cannot happen for exact duplicates; kept so a bug shows as undecided, not a guess
            results[i] = TokenResult(i, name(i), UNDECIDED, np.nan, stage, reason=check.reason)
        progress.advance(1)

    if reps.size == 1 and layer.bias is not None:  # without a bias, identical rows are all ties (above)
        # All rows share one weight vector: the best-biased row (if not tied) wins at every point,
        # by its smallest bias lead. No solver is needed and the gap is exact.
        lead = float(layer.bias[reps[0]] - np.delete(layer.bias, reps[0]).max())
        for i in (int(r) for r in reps if int(r) in targets and int(r) not in results):
            results[i] = _argmaxable(i, name(i), domain.anchor(), lead, "dominated")
    pending = np.array([i for i in targets if i not in results], dtype=np.int64)
    if reps.size == layer.num_classes:  # no duplicate rows: the competitors are the layer itself, no copy
        comp_weight, comp_bias = layer.weight, layer.bias
    else:
        comp_weight = layer.weight[reps]
        comp_bias = None if layer.bias is None else layer.bias[reps]
    position = np.full(layer.num_classes, -1, dtype=np.int64)
    position[reps] = np.arange(reps.size)
    # For a bias-free layer, the cone the domain generates gives the same verdicts (see
    # ``scale_free_cone`` in domains.py) and admits exact certificates on its open sides.
    solve_domain = domain.scale_free_cone() if comp_bias is None else None
    solve_domain = solve_domain or domain

    t0 = time.perf_counter()
    starts = np.zeros((pending.size, layer.dim))
    weight32 = None  # the screen's float32 copy, reused by the exact step's seeding
    backend = None  # where the heavy products run; the batched phase reuses the screen's
    if pending.size and not options.exact_all:
        weight32 = comp_weight.astype(np.float32)
        backend = make_backend(weight32, options.device)
        timings["device"] = backend.name
        found = screen(weight32, comp_weight, comp_bias, position[pending], domain,
                       block_bytes=options.block_bytes, progress=progress, backend=backend)
        for k, i in enumerate(pending):
            if found.gap[k] > 0:
                results[int(i)] = _argmaxable(int(i), name(int(i)), found.witness[k], found.gap[k], "screen")
        starts = found.witness
    timings["screen_seconds"] = round(time.perf_counter() - t0, 4)

    comp = Competitors(comp_weight, comp_bias, weight32)
    open_rows = np.array([k for k, i in enumerate(pending) if int(i) not in results], dtype=np.int64)
    if open_rows.size and options.batched and not options.exact_all and solve_domain.whole_space:
        # R^d: rows deep inside their competitors' hull get shared-basis certificates a block at a time.
        t0 = time.perf_counter()
        progress.stage("batched phase: rows inside the hull", int(open_rows.size))
        checks = interior_certificates(comp, position[pending[open_rows]], solve_domain, progress=progress.advance,
                                       backend=backend, timings=timings)
        for k, cert in zip(open_rows, checks, strict=True):
            if cert is not None:
                i = int(pending[k])
                results[i] = _unargmaxable(i, name(i), cert, reps, "batched")
        timings["batched_tokens"] = int(sum(c is not None for c in checks))
        timings["batched_seconds"] = round(time.perf_counter() - t0, 4)
        open_rows = np.array([k for k in open_rows if int(pending[k]) not in results], dtype=np.int64)

    if backend is not None and backend.note:  # smaller blocks, or a move to the CPU after a device out-of-memory
        timings["device_note"] = backend.note
    t0 = time.perf_counter()
    seeded = should_seed(solve_domain, options.exact) and open_rows.size > 0
    seed_share = 0.0  # each token's part of the batched seeding, counted in its exact-step time
    if seeded:
        progress.stage("seeding the exact step", int(open_rows.size))
        begin = starts[open_rows] if not options.exact_all else np.broadcast_to(solve_domain.centre(),
                                                                                 (open_rows.size, layer.dim))
        starts[open_rows] = seed_points(comp, position[pending[open_rows]], solve_domain, begin,
                                        options.exact.seed_steps, progress=progress.advance)
        seed_share = (time.perf_counter() - t0) / open_rows.size
    per_token = []
    progress.stage("exact step", int(open_rows.size))
    use_starts = seeded or not options.exact_all
    settled, block_share = {}, 0.0  # blocks of tokens solved together; the rest go one at a time (below)
    if options.block_exact and not options.exact_all and open_rows.size:
        t_b = time.perf_counter()
        outs = solve_blocks(comp, position[pending[open_rows]], solve_domain, starts[open_rows], options.exact)
        settled = {int(k): out for k, out in zip(open_rows, outs, strict=True) if out is not None}
        open_rows = np.array([k for k in open_rows if int(k) not in settled] + list(settled), dtype=np.int64)
        timings["block_exact_seconds"] = round(time.perf_counter() - t_b, 4)
        timings["block_exact_tokens"], timings["block_exact_settled"] = len(outs), len(settled)
        block_share = timings["block_exact_seconds"] / len(outs)
    n_fallback = timings["fallback_tokens"] = int(open_rows.size - len(settled))
    block = _prefetch_block(comp_weight.shape[0])
    fetch_share = 0.0
    for n_done, k in enumerate(open_rows):
        i = int(pending[k])
        t_tok = time.perf_counter()
        if n_done % block == 0 and n_done < n_fallback:  # the next tokens' passes over every row, as one product
            ks = open_rows[n_done:min(n_done + block, n_fallback)]
            comp.prefetch(position[pending[ks]], starts[ks] if use_starts else None)
            fetch_share = (time.perf_counter() - t_tok) / ks.size
            t_tok = time.perf_counter()
        x0 = starts[k] if use_starts else None
        out = settled[int(k)] if int(k) in settled else solve_token(comp, int(position[i]), solve_domain, x0,
                                                                    options.exact, seeded=seeded)
        if out.witness is not None:
            x, gap = out.witness, out.witness_gap
            # Bias-free: a witness of the cone is shrunk into the domain; on R^d it is normalised.
            if solve_domain is not domain or (comp_bias is None and domain.whole_space):
                y, gap_y = _scale_free_witness(comp, int(position[i]), x, domain)
                if gap_y > 0:
                    x, gap = y, gap_y
                elif solve_domain is not domain:  # the cone's witness did not survive rounding: say so
                    x, gap = None, gap_y
            if x is None:
                results[i] = TokenResult(i, name(i), UNDECIDED, np.nan, "exact",
                                         reason="witness did not survive rescaling into the domain")
            else:
                results[i] = _argmaxable(i, name(i), x, gap, "exact")
        elif out.certificate is not None and out.certificate.ok:
            results[i] = _unargmaxable(i, name(i), out.certificate, reps, "exact")
        else:
            results[i] = TokenResult(i, name(i), UNDECIDED, np.nan, "exact", reason=out.reason)
        per_token.append(time.perf_counter() - t_tok + seed_share + (block_share if int(k) in settled else fetch_share))
        progress.advance(1)
    timings["exact_seconds"] = round(time.perf_counter() - t0, 4)
    if options.practical:
        t0 = time.perf_counter()
        precision = options.precision or layer.source_dtype
        timings["precision"] = precision
        timings["practical_checked"] = _label_practical(results, comp, position, domain, unit_roundoff(precision),
                                                        progress)
        timings["practical_seconds"] = round(time.perf_counter() - t0, 4)
    if exponent:  # margins back in the layer's own logit units (exact: a power of two)
        results = {i: _unscaled(r, exponent) for i, r in results.items()}
    if options.probability_seconds > 0 and probability_bounded(domain):
        t0 = time.perf_counter()
        # Probabilities depend on the logits' scale: they are bounded on the layer as given.
        timings["probability_tokens"] = _bound_probabilities(results, original, domain,
                                                             t0 + _probability_budget(options, t0 - started),
                                                             progress)
        timings["probability_seconds"] = round(time.perf_counter() - t0, 4)
    timings["exact_tokens"] = len(per_token)
    if per_token:
        timings["exact_median_seconds"] = round(float(np.median(per_token)), 5)
        timings["exact_max_seconds"] = round(float(np.max(per_token)), 5)

    return AuditReport(original.num_classes, original.dim, domain.describe(), original.bias is not None,
                       original.source_dtype, time.perf_counter() - started,
                       [results[i] for i in targets], names=names_list, timings=timings,
                       special=original.special, display=original.display,
                       token_kinds=original.token_kinds)


def _as_layer(weight, bias, names) -> tuple[OutputLayer, Domain]:
    """The validated layer for what ``audit`` was given, and the domain to use when none is named.

    Arrays (numpy, torch, nested lists) and ``OutputLayer`` audit on R^d; a module with a
    ``weight`` (and ``bias``), such as ``torch.nn.Linear``, audits that head; a ``transformers``
    model has its final norm folded in and audits on the features the norm can produce.
    """
    if isinstance(weight, OutputLayer):
        return weight, Unbounded()
    if hasattr(weight, "config") and hasattr(weight, "state_dict"):
        from ..sources.huggingface import checkpoint_from_model  # noqa: PLC0415 - sources sit above the engine

        if bias is not None:
            raise InputError("bias= cannot be combined with a transformers model (its head is read from the model)")
        loaded = checkpoint_from_model(weight)
        return loaded.layer, loaded.domain
    if not isinstance(weight, np.ndarray) and hasattr(weight, "weight") and not isinstance(weight, (list, tuple)):
        module = weight
        weight = module.weight
        if bias is None:
            bias = getattr(module, "bias", None)
        name = type(module).__name__
        return OutputLayer.from_arrays(weight, bias, names, name=f"{name}.weight", bias_name=f"{name}.bias"), \
            Unbounded()
    return OutputLayer.from_arrays(weight, bias, names), Unbounded()


def _normalised(layer: OutputLayer) -> tuple[OutputLayer, int]:
    """The layer divided by ``2**e`` so that its largest |weight| or |bias| lies in [0.5, 1), and ``e``.

    Scaling every logit by the same positive factor changes no argmax, so verdicts, witnesses
    and certificates carry over unchanged; margins scale by the factor. The solvers' tolerances
    and caps are absolute numbers, so one scale for every layer also makes their answers (the
    practically-unreachable label above all) independent of the units the weights came in. Multiplying by a power
    of two is exact unless values fall below float64's normal range, which is checked.
    """
    top = _largest_magnitude(layer.weight)  # finite: validated at the boundary
    if layer.bias is not None:
        top = max(top, _largest_magnitude(layer.bias))
    if top == 0.0:
        raise InputError("every weight (and bias) of the layer is zero: every token ties with every other")
    exponent = int(np.frexp(top)[1])
    if exponent == 0:
        return layer, 0
    weight = _scaled_exactly(layer.weight, exponent)
    bias = None if layer.bias is None else _scaled_exactly(layer.bias, exponent)
    if weight is None or (layer.bias is not None and bias is None):
        values = np.abs(layer.weight.ravel())
        if layer.bias is not None:
            values = np.concatenate([values, np.abs(layer.bias)])
        smallest = float(values[values != 0].min())
        raise InputError(f"the weights and bias span too many orders of magnitude for float64 (largest |value|"
                         f" {top:.3g}, smallest nonzero {smallest:.3g}): scaling them to a common range would"
                         " round the smallest; rescale or clean the layer")
    return replace(layer, weight=weight, bias=bias), exponent


def _largest_magnitude(values: np.ndarray) -> float:
    """max |value| without a temporary the size of ``values`` (4 GB at 128k x 4096)."""
    return max(float(values.max()), -float(values.min())) if values.size else 0.0


def _scaled_exactly(values: np.ndarray, exponent: int, rows: int = 4096) -> np.ndarray | None:
    """``values * 2**-exponent``, or None if that rounds any value.

    Multiplying by a power of two is exact unless a result overflows or falls below float64's
    normal range. Here every result has magnitude below 1, so scaling up (``exponent < 0``)
    is always exact; scaling down is checked, a block of rows at a time (no second copy of
    the weights). The product by ``2.0**-exponent`` rounds as ``np.ldexp`` does, and is several
    times faster.
    """
    if abs(exponent) > 1000:  # 2**-exponent itself would not be a float64
        out = np.ldexp(values, -exponent)
        return out if np.array_equal(np.ldexp(out, exponent), values) else None
    out = values * (2.0 ** -exponent)
    if exponent > 0:
        back = 2.0 ** exponent
        flat_out, flat_in = out.reshape(out.shape[0], -1), values.reshape(values.shape[0], -1)
        for lo in range(0, flat_out.shape[0], rows):
            if not np.array_equal(flat_out[lo:lo + rows] * back, flat_in[lo:lo + rows]):
                return None
    return out


def _unscaled(result: TokenResult, exponent: int) -> TokenResult:
    """A result of the scaled layer in the units of the layer as given (margins times ``2**exponent``)."""
    return replace(result, margin=float(np.ldexp(result.margin, exponent)),
                   best_margin=float(np.ldexp(result.best_margin, exponent)),
                   threshold=float(np.ldexp(result.threshold, exponent)))


def _prefetch_block(rows: int, budget_bytes: int = 128 * 2**20) -> int:
    """Tokens per :meth:`Competitors.prefetch`: two float64 columns of ``rows`` each, within the budget."""
    return int(min(64, max(1, budget_bytes // (16 * rows))))


def _label_practical(results: dict, comp: Competitors, position, domain, unit: float,
                     progress: Progress | None = None) -> int:
    """Relabel argmaxable tokens whose best margin is below the precision threshold; returns how
    many needed their best margin solved (those whose witness gap was below the threshold)."""
    progress = as_progress(progress)
    bounded = margin_domain(domain, comp.bias is not None)
    if bounded is None:
        return 0
    bounded = bounded.resolve(comp.weight.shape[1])
    solved = 0
    max_norm = float(comp.norms.max())
    max_bias = 0.0 if comp.bias is None else float(np.abs(comp.bias).max())
    # |s_j(x)| <= |x| max|w_j| + max|b_j| settles almost every token without a product.
    close = [i for i, res in results.items() if res.verdict == ARGMAXABLE
             and res.margin < 1.01 * unit * (float(np.linalg.norm(res.witness)) * max_norm + max_bias)]
    progress.stage("best margins of narrow winners", len(close))
    for i in close:
        res = results[i]
        progress.advance(1)
        pos = int(position[i])
        limit = threshold(comp, _on_the_sphere(res.witness, bounded, comp.bias), unit)
        if res.margin >= limit:
            continue
        solved += 1
        best = best_margin(comp, pos, bounded, res.witness, cap=max(1.0, 1e3 * limit),
                           threshold_at=lambda x: threshold(comp, _on_the_sphere(x, bounded, comp.bias), unit))
        if best is None:
            continue
        limit = threshold(comp, _on_the_sphere(best.x, bounded, comp.bias), unit)
        if best.value < limit:
            x, gap = (best.x, best.gap) if best.gap > 0 else (res.witness, res.margin)
            results[i] = TokenResult(i, res.token, PRACTICAL, gap, res.stage, witness=x, check=res.check,
                                     best_margin=best.value, threshold=limit)
    return solved


def _on_the_sphere(x: np.ndarray, domain, bias) -> np.ndarray:
    """Where the precision threshold of a best margin is measured.

    Without a bias, on a ball around 0, every gap and every logit scales with |x|: the best
    margin is reached on the sphere, where the solver's point may not quite be. Its ray is
    what matters, so the threshold is taken where the ray meets the sphere (the solver's
    interior point would understate the logits, and so the threshold, by |x| / R).
    """
    norm = float(np.linalg.norm(x))
    radius = domain.origin_ball_radius
    if bias is not None or radius is None or norm == 0:
        return x
    return x * (radius / norm)


def _probability_budget(options: AuditOptions, verdict_seconds: float) -> float:
    """Seconds for max-probability brackets: the option's budget, capped at a quarter of the verdicts' time."""
    return min(options.probability_seconds, max(2.0, 0.25 * verdict_seconds))


def _bound_probabilities(results: dict, layer: OutputLayer, domain, deadline: float, progress: Progress) -> int:
    """Add max-probability bounds to unreachable tokens, in id order, until the deadline; returns how many."""
    done = 0
    flagged = [i for i in sorted(results) if results[i].verdict in (UNARGMAXABLE, PRACTICAL)]
    progress.stage("highest probabilities (time budget)", len(flagged))
    for i in flagged:
        res = results[i]
        progress.advance(1)
        if time.perf_counter() > deadline:
            continue
        found = max_probability(layer.weight, layer.bias, i, domain, deadline=deadline, seed_rows=res.support)
        if found is not None:
            results[i] = replace(res, max_probability=found.reached, max_probability_upper=found.upper)
            done += 1
    return done


def _argmaxable(i, token, x, gap, stage) -> TokenResult:
    return TokenResult(i, token, ARGMAXABLE, float(gap), stage, witness=np.asarray(x, dtype=np.float64),
                       check="witness gap > rounding-error bound")


def _unargmaxable(i, token, cert: certify.CertificateCheck, reps: np.ndarray, stage) -> TokenResult:
    """The result of a checked certificate over competitor positions (``reps`` maps them to row ids)."""
    return TokenResult(i, token, UNARGMAXABLE, cert.bound, stage, support=reps[cert.support], weights=cert.weights,
                       check=cert.method)


def _scale_free_witness(comp: Competitors, pos: int, x: np.ndarray, domain) -> tuple[np.ndarray, float]:
    """Rescale a witness of a bias-free layer: unit norm on R^d, else into the domain.

    On R^d any positive multiple of a witness is one, so the report uses unit
    norm; a domain solved as its cone needs the witness shrunk into it. The
    rescaled point is checked again from scratch.
    """
    norm = float(np.linalg.norm(x))
    if not norm > 0:  # x = 0 ties every row of a bias-free layer: not a witness
        return x, -np.inf
    factor = domain.ray_room(x)  # how far the ray through x stays in the domain
    if not np.isfinite(factor):  # all of it: unit norm
        factor = 1.0 / norm
    y = domain.project(x * (factor * (1 - 1e-9)))  # a no-op but where rounding left the domain
    gap = certify.check_witness(comp.weight, comp.bias, pos, y, domain, comp.norms)
    return y, gap


def _targets(tokens, n: int) -> list[int]:
    if tokens is None:
        return list(range(n))
    ids = []
    for t in tokens:
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
            raise InputError(f"token ids must be integers, got {t!r}")
        if not 0 <= int(t) < n:
            raise InputError(f"token id {int(t)} is out of range: the layer has {n} rows (0..{n - 1})")
        ids.append(int(t))
    if not ids:
        raise InputError("the list of tokens to audit is empty")
    return sorted(set(ids))


def _row_groups(weight: np.ndarray, block: int = 8192, mult: np.ndarray | None = None) -> np.ndarray:
    """A group id per row, equal exactly for rows with identical bits, in O(n) extra memory.

    Rows are fingerprinted by their bits (:func:`row_fingerprints`: identical rows always
    collide); rows that share a fingerprint are then compared bit for bit, so a chance collision
    of different rows never merges them.
    """
    bits = np.ascontiguousarray(weight).view(np.uint64)
    _, group = np.unique(row_fingerprints(bits, mult, block), return_inverse=True)
    group = group.ravel().astype(np.int64)
    counts = np.bincount(group)
    next_id = counts.size
    for g in np.flatnonzero(counts > 1):  # shared fingerprints: split by exact comparison
        members = np.flatnonzero(group == g)
        same = np.all(bits[members] == bits[members[0]], axis=1)
        members = members[~same]  # the rows equal to the first keep the id g
        while members.size:
            same = np.all(bits[members] == bits[members[0]], axis=1)
            group[members[same]] = next_id
            next_id += 1
            members = members[~same]
    return group


def _group_identical_rows(layer: OutputLayer):
    """Split rows into representatives (one per distinct weight row, the best bias) and the rest.

    Returns (reps, rep_of, tie_partner): ``reps`` sorted ids of representatives;
    ``rep_of[i]`` the representative of row i's group; ``tie_partner[i]``
    another row with identical weights *and* bias, for rows in such a tie.
    """
    n = layer.weight.shape[0]
    group = _row_groups(layer.weight)
    bias = layer.bias if layer.bias is not None else np.zeros(n)
    ids = np.arange(n)
    order = np.lexsort((ids, -bias, group))  # by group, best bias first, then lowest id
    first = np.ones(n, dtype=bool)
    first[1:] = group[order][1:] != group[order][:-1]
    rep_sorted = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    rep_of = np.empty(n, dtype=np.int64)
    rep_of[order] = order[rep_sorted]
    reps = np.sort(order[first])
    tie_partner: dict[int, int] = {}
    for i in np.flatnonzero(rep_of != ids):
        r = int(rep_of[i])
        if bias[i] == bias[r]:
            tie_partner[int(i)] = r
            tie_partner.setdefault(r, int(i))
    return reps, rep_of, tie_partner
