"""The batched phase: certificates for tokens deep inside their competitors' hull, a block at a time.

On R^d, token q is unargmaxable exactly when weights ``lam >= 0`` with ``sum lam = 1`` on the
other rows give ``sum_j lam_j w_j = w_q`` (and ``sum_j lam_j b_j >= b_q`` with a bias; see
docs/method.md); such weights prove it on every other domain too. Under-trained and planted rows
sit deep inside the hull, where such weights abound, yet the exact step finds them one token at a
time, by constraint generation and interior-point solves. Here, for a block of tokens at once:

1. **One support for every token**: the K = 8d rows farthest from the rows' mean in whitened
   coordinates, the outermost rows of the hull; if they certify under a quarter of a pass's first
   block, K rows drawn at random (a fixed seed; with a bias, a quarter of them the rows whose bias
   is highest for their weights: :func:`bias_leaders`) are tried on the rest, and the pass keeps the
   kind that certified more. Neither choice holds on every head: on a
   real-like head the outermost rows held every under-trained row tried and random ones none; on
   LM-like rows whose norms vary around a shared mean, the reverse (figures in docs/benchmarks.md).
2. **Maximum-entropy weights** on that support with mean ``w_q``: ``lam_j ~ exp(theta_q . w_j)``
   (times a tilt towards rows of larger bias, with one: ``_TILT``; where those weights match the row
   but fall short of its bias, once more with the bias as a coordinate to match: ``lifted``),
   found by preconditioned conjugate-gradient steps (with exact line searches) on the convex dual
   ``log sum_j exp(theta . w_j) - theta . w_q``.
   All tokens of the block share one Hessian (under the block's average weights, built again once
   they have moved; from float32 rows on the CPU: it only preconditions), so
   each step is a few K x d x B matrix products and no per-token loop. The weights come out
   strictly positive and spread: a "deep" certificate that survives the exact correction below.
3. **One basis for the block** (the d + 1 rows of largest average weight):
   :func:`certify.check_on_shared_basis` inverts it once and encloses each token's exact weights.

4. **The other answer** (R^d and balls): for the tokens left, the same search without its rule
   for stalled tokens; a token outside the support's hull gets the direction its dual variable
   grows along, and a point along it from the domain's anchor is tried as a witness
   (:func:`_witness_pass`).

Nothing is decided here but by a checked certificate or witness. Tokens it does not settle
(argmaxable ones it found no point for, and anything the checks cannot prove) go on to the
exact step as before.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from scipy import linalg

from ..report.stats import StageStats
from . import certify
from ._blas import matvec, rows_times
from .backend import NUMPY_OPS, NumpyBackend
from .competitors import Competitors
from .exact import ExactResult, settle_or_reopen

if TYPE_CHECKING:
    from .state import AuditState


def support_rows(comp: Competitors, size: int, sample: int = 20000, backend=None,
                 spread: np.ndarray | None = None) -> np.ndarray:
    """The ``size`` rows farthest from the mean in whitened coordinates (sorted indices).

    ``spread`` is :func:`whitened_spread`'s answer when the caller has it (a second support
    of another size costs no second pass over the rows).
    """
    spread = whitened_spread(comp, sample, backend) if spread is None else spread
    size = min(size, spread.size)
    return np.sort(np.argpartition(-spread, size - 1)[:size])


def whitened_spread(comp: Competitors, sample: int = 20000, backend=None) -> np.ndarray:
    """Every row's distance from the rows' mean in whitened coordinates.

    The covariance is estimated on an evenly spaced sample of rows: a hint for choosing rows,
    never used in a certificate. ``backend`` ranks the rows (a GPU's, when the audit has one).
    """
    weight = comp.weight
    m = weight.shape[0]
    backend = backend if backend is not None else NumpyBackend(comp.weight32)
    mean = weight.mean(axis=0)
    picked = weight[:: max(1, m // sample)] - mean

    def eigen(ops):
        # covariance, not centred_gram: on numpy it runs on scipy's BLAS, like the exact step right
        # after this phase (see _blas.py); numpy's pool left spinning slowed that step by about 10 %.
        covariance = ops.covariance(ops.asarray(picked), ops.full(picked.shape[0], 1.0 / picked.shape[0]))
        values, vectors = ops.eigh(covariance)  # the lower triangle, which is all numpy's holds
        return ops.numpy(values), ops.numpy(vectors)

    values, vectors = backend.on_device(eigen, "choosing the batched phase's support")
    keep = values > values.max() * 1e-12
    whiten = vectors[:, keep] / np.sqrt(values[keep])
    return backend.transformed_norms(mean.astype(np.float32), whiten.astype(np.float32))


def bias_leaders(comp: Competitors, sample: int = 20000) -> np.ndarray:
    """Every row, by how far its bias exceeds what a linear fit on its weights predicts (largest first).

    A certificate's weights must give ``sum_j lam_j b_j >= b_q`` while matching ``w_q``: for a row whose
    own bias is high for its place (a LayerNorm-folded head's bias is ``W beta`` plus a row's own part),
    only rows whose bias is higher still for theirs can. The fit (least squares of b on [w, 1], on an
    evenly spaced sample of ``sample`` rows, at least 8(d + 1)) is a hint for choosing rows, never in a
    certificate. A sample of 4096 rows instead of all 16,384 of swish_box 16384 x 384 fitted its noise:
    483 -> 481 rows settled and the phase took 6.4 -> 9.1 s.
    """
    weight, bias = comp.weight, comp.bias
    m, d = weight.shape
    picked = np.arange(0, m, max(1, m // max(sample, 8 * (d + 1))))
    design = np.hstack([weight[picked], np.ones((picked.size, 1))])
    # Normal equations (a ridge of 1e-12 of the mean diagonal): at 20000 x 1000 0.3 s against
    # np.linalg.lstsq's 1.3 s, the same fit to 1e-12 on random rows.
    gram = design.T @ design
    gram[np.diag_indices_from(gram)] += 1e-12 * max(float(np.trace(gram)) / (d + 1), 1e-300)
    try:
        coef = linalg.solve(gram, design.T @ bias[picked], assume_a="pos", check_finite=False)
    except (linalg.LinAlgError, ValueError):
        coef = np.linalg.lstsq(design, bias[picked], rcond=None)[0]
    residual = bias - (weight @ coef[:-1] + coef[-1])
    return np.argsort(-residual, kind="stable")


def sampled_rows(m: int, size: int) -> np.ndarray:
    """``size`` of the ``m`` rows drawn at random (sorted), the same ones on every run: a support that
    depends only on the layer, so that a chunked run decides as a plain one."""
    return np.sort(np.random.default_rng(_SAMPLE_SEED).choice(m, min(size, m), replace=False))


def run(state: AuditState) -> StageStats | None:
    """Stage 3: shared-basis certificates for the open rows deep inside their competitors' hull, and
    witnesses for those its search finds outside the support's hull (R^d and balls).

    Such a certificate (``sum_j lam_j w_j = w_q``, ``sum_j lam_j b_j >= b_q``) holds on every
    domain. On R^d it is the only kind there is; on any other domain a token may also be beaten
    only there, so only the rows the screen found deepest (``_WIDE_DEPTH``) are tried: the
    under-trained rows of a LayerNorm-folded head lie 0.10 to 0.45 deep, whisper-base's
    narrow winners 0.0004 to 0.005.
    """
    ids = state.open_ids()
    options = state.options
    domain = state.solve_domain
    whole = domain.whole_space
    if not ids.size or not options.batched or options.exact_all or (not whole and state.guesses is None):
        return None
    if domain.solver_family == "lp" and not domain.open_coordinates().any():
        # A box bounded on every side: there a certificate need not balance the token's row (the box
        # bounds what is left over), a few rows do, and the exact step finds them in a round or two
        # with factors of its few rows (block_exact._PinnedSplit): box_bias 32768 x 512, 15 ms a
        # token there against 38 ms for each row this phase settled (467 of 1,827, 17.7 s).
        return None
    depth = state.guesses.depth_at(ids) if state.guesses is not None else None
    if depth is not None:
        # What the screen's best guess showed: a token it missed by a hair (a near-duplicate's twin
        # leads by 1e-5 of the logits' scale) is no deep row, and goes straight to the exact step.
        keep = depth >= (_SHALLOW if whole else _WIDE_DEPTH)
        ids, depth = ids[keep], depth[keep]
        # Off R^d a few deep rows are left to the exact step: the supports cost more than they save
        # (whisper-base: 2.5 s for its one row 0.28 deep, which the exact step settles in 0.3 s).
        if not ids.size or (not whole and ids.size < _MIN_ROWS_OFF_RD):
            return None
        if ids.size > _GIVE_UP_BLOCK:
            # Deepest first: where a block of the deepest rows gets no certificate, shallower ones get
            # none either (see interior_certificates' ``give_up``). Fewer tokens keep their order: the
            # basis a block settles on depends on it, and a chunked run should decide as a plain one.
            order = np.argsort(-depth, kind="stable")
            ids, depth = ids[order], depth[order]
    state.progress.stage("batched phase: rows inside the hull", int(ids.size))
    witnesses: dict[int, tuple[np.ndarray, float]] = {}
    checks, spent = interior_certificates(state.comp, state.position[ids], domain,
                                          progress=state.progress.advance, backend=state.backend, depth=depth,
                                          give_up=depth is not None, witnesses=witnesses)
    for i, cert in zip(ids.tolist(), checks, strict=True):
        if cert is not None:
            state.unargmaxable(i, cert, "batched")
    # A witness of the solve domain (a bias-free layer's cone) is rescaled into the audit's and checked again.
    found = sum(settle_or_reopen(state, int(ids[k]), ExactResult(witness=x, witness_gap=gap), "batched")
                for k, (x, gap) in witnesses.items())
    skipped = int(spent.pop("skipped", 0))
    counts = {"skipped": skipped} if skipped else {}
    if found:
        counts["witnesses"] = found
    return StageStats("batched", int(ids.size), sum(c is not None for c in checks) + found, parts=spent,
                      counts=counts)


def interior_certificates(comp: Competitors, positions: np.ndarray, domain, block: int = 256,
                          steps: int = 120, refresh: int = 16,
                          progress: Callable[[int], None] | None = None, backend=None,
                          depth: np.ndarray | None = None, give_up: bool = False,
                          witnesses: dict[int, tuple[np.ndarray, float]] | None = None
                          ) -> tuple[list[certify.CertificateCheck | None], dict[str, float]]:
    """A checked certificate, or None, for each position (rows of ``comp``) on R^d, and the seconds
    spent choosing the support, searching and checking.

    ``block`` tokens share each Newton search: its K x d x d Hessian is the costly part at
    large d, and is shared by the block (256 beat 64 in docs/benchmarks.md's measurements).
    ``steps`` bounds the Newton steps per block, ``refresh`` the steps between builds of the shared
    Hessian (it is built sooner where the block's average weights move: ``_REBUILD_MOVE``). From
    d = 1024 on, tokens dropped as stalled are searched once more at the end, together, with twice the
    steps and five times the patience; then whatever is left, once, on a support of 16d rows.
    ``progress`` is called with the number of tokens of each block done. ``backend`` (:mod:`.backend`)
    runs the search for weights (on a GPU when the audit has one); the certificates are checked on the
    CPU in float64 whatever it is. ``depth`` (the screen's :attr:`~.state.Guesses.depth` of each token)
    decides, below d = 1024, which tokens the first pass left get the pass on 16d rows: every one where
    the first pass settled a good share of what it tried, else those at least ``_WIDE_DEPTH`` deep. With
    ``give_up`` (positions sorted deepest first), each pass starts with a pilot block of
    ``_GIVE_UP_BLOCK`` tokens; a block where fewer than ``_MIN_YIELD`` of them get a certificate ends
    the pass. The rest, shallower, go on to the wide pass where one follows, else to the exact step
    (``spent["skipped"]`` counts those). On PP-OCRv5, whose rows must also meet the bias inequality, the
    phase spent 6.2 s on 6,189 rows and settled none. With ``witnesses`` (a dict, filled in) on a domain
    of rays (R^d, a ball), the tokens left without a certificate are searched once more for the other
    answer (:func:`_witness_pass`): a token outside the support's hull gets the direction that separates
    it, and a point along it that :func:`certify.check_witnesses` proves goes into ``witnesses[k] =
    (point, gap)``.
    """
    spent = {"support": 0.0, "search": 0.0, "check": 0.0}
    # The search only proposes weights; overflow there (rows far outside a token's reach) gives inf or
    # NaN weights that the stall rule drops and the checks refuse, so numpy's warnings say nothing to a user.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        out = _interior_certificates(comp, positions, domain, block, steps, refresh, progress, backend, spent,
                                     depth, give_up, witnesses)
    return out, spent


def _interior_certificates(comp, positions, domain, block, steps, refresh, progress, backend, spent, depth,
                           give_up=False, witnesses=None):
    m, d = comp.weight.shape
    # A certificate needs d + 1 rows besides the token's own (and a witness search as many to separate
    # from). Below 2(d + 1) rows the phase once stopped here, taking a deep certificate to need well over
    # d + 1 rows: at 2048 x 1024, fp16's 61 rows near the mean then took the exact step 28.6 s, where the
    # search on every row certifies all 61 in 0.8 s, and undertrained's 59 argmaxable rows 14.8 s, where
    # the witness search settles 58 (undertrained, undertrained_ball and layernorm_ball spend 1.9 s more
    # each on certificates their argmaxable rows do not have, shallow 1.3 s).
    if m < d + 2:
        if progress is not None and len(positions):
            progress(len(positions))  # the stage was announced: complete it
        return [None] * len(positions)
    backend = backend if backend is not None else NumpyBackend(comp.weight32)
    positions = np.asarray(positions, dtype=np.int64)

    spreads: list[np.ndarray] = []  # the whitened spread, once per call (every pass's outermost rows)
    leaders: list[np.ndarray] = []  # the rows by bias beyond what their weights predict, once per call

    def make(kind: str, size: int) -> _Support:
        t0 = time.perf_counter()
        if kind == "outermost":
            if not spreads:
                spreads.append(whitened_spread(comp, backend=backend))
            rows = support_rows(comp, size, spread=spreads[0])
        elif comp.bias is not None and d < _PERSIST_MIN_DIM:  # the fit costs a sample x d^2 solve
            # A share of the rows whose bias is highest for their place: the certificates of rows whose own
            # bias is (see bias_leaders). On layernorm_ball 16384 x 384 the tokens left to the exact step
            # went 29 -> 13 (audit without probabilities 18.5 -> 13.3 s), swish_box 31 -> 9 (14.5 -> 10.1 s),
            # at 32768 x 512 56 -> 21 (74.6 -> 51.2 s); PP-OCRv4/v5, whose phase settles nothing, spent
            # 0.2-0.4 s more. A half instead of a quarter did as well there.
            if not leaders:
                leaders.append(bias_leaders(comp))
            share = int(size * _BIAS_LEADERS)
            rows = np.union1d(sampled_rows(m, size - share), leaders[0][:share])
        else:
            rows = sampled_rows(m, size)
        found = _Support(comp, rows)
        spent["support"] += time.perf_counter() - t0
        return found

    def settle(at: np.ndarray, steps: int, patience: int, base: _Support) -> np.ndarray:
        """Certificates for ``positions[at]`` into ``out``; returns which were dropped as stalled."""
        pos = positions[at]
        t0 = time.perf_counter()
        # A token never supports its own certificate: a block holding support rows gets its own support.
        support = base.without(comp, pos)
        spent["support"] += time.perf_counter() - t0
        if support.rows.size <= d + 1:
            return np.zeros(pos.size, dtype=bool)
        t0 = time.perf_counter()
        tilt = None
        if comp.bias is not None and _TILT > 0:
            b = comp.bias[support.rows]
            tilt = _TILT * (b - b.max()) / max(float(b.std()), 1e-300)
        def search(targets, lifted=False, start=None):
            return backend.on_device(
                lambda ops: _max_entropy_weights(support, targets, steps, refresh, patience=patience, ops=ops,
                                                 tilt=tilt, lifted=lifted, start=start),
                "in the batched phase")

        lams, converged = search(comp.weight[pos])
        t1 = time.perf_counter()
        checked, met = lams, converged
        if support.bias_scale is not None:
            # Weights that match the row and fall clearly short of its bias fail any check (the enclosure
            # moves them by rounding noise): none is tried, and none makes the check try another basis.
            short = converged & (support.bias @ np.nan_to_num(lams) < comp.bias[pos] - _SHORT * support.bias.std())
            checked, met = np.where(short, np.nan, lams), converged & ~short
        checks = _check_block(comp, pos, support, checked, met, domain)
        spent["search"] += t1 - t0
        spent["check"] += time.perf_counter() - t1
        # Weights that met the row but not its bias: searched again with the bias matched as well.
        again = np.flatnonzero(converged & np.array([c is None for c in checks]))
        if again.size and support.bias_scale is not None:
            t0 = time.perf_counter()
            # From the plain search's weights (theta and eta = 0): only the bias is off there.
            start = np.log(np.maximum(lams[:, again], 1e-300))
            lifted_lams, lifted_met = search(support.lifted_targets(comp.weight[pos[again]], comp.bias[pos[again]]),
                                             True, start)
            t1 = time.perf_counter()
            for k, check in zip(again, _check_block(comp, pos[again], support, lifted_lams, lifted_met, domain),
                                strict=True):
                checks[k] = check
            spent["search"] += t1 - t0
            spent["check"] += time.perf_counter() - t1
        for k, check in zip(at, checks, strict=True):
            out[k] = check
        return ~np.isfinite(lams).all(axis=0)

    def pilot(part: np.ndarray, steps: int, patience: int, size: int, kinds: tuple[str, ...], give_up: bool
              ) -> tuple[_Support | None, str, np.ndarray]:
        """A pass's first block: each kind of support in turn, on the tokens still open, until ``_MIN_YIELD``
        of the block is settled. Returns the kind that settled most (the first, on a tie) with its
        support when that is the last one made (else None: the next block makes it again), and the
        positions the last search dropped as stalled.

        A kind that settles a few is not enough: with conjugate directions the outermost rows' hull
        held 1 of the 64 deepest under-trained rows of heads.py's 8192 x 256 head, random rows all 64.
        """
        # A pilot only tests the support: tokens that converge at all fall tenfold within
        # _PILOT_PATIENCE steps, and a support that holds none of them costs only that.
        pilot_patience = min(patience, _PILOT_PATIENCE) if give_up else patience
        tried: list[tuple[int, str]] = []
        base, dropped = None, part[:0]
        for kind in kinds:
            todo = part[[out[k] is None for k in part]]
            if todo.size == 0:
                break
            base = None  # the last kind's support goes first (1 GB at 128k x 4096, more with its inverse)
            base = make(kind, size)
            dropped = todo[settle(todo, steps, pilot_patience, base)]
            tried.append((sum(out[k] is not None for k in todo), kind))
            if sum(out[k] is not None for k in part) >= _MIN_YIELD * part.size:
                break
        best = max(tried, key=lambda t: t[0])[1] if tried else kinds[0]
        return (base if tried and best == tried[-1][1] else None), best, dropped

    def settle_blocks(at: np.ndarray, steps: int, patience: int, size: int, kinds: tuple[str, ...],
                      report=None, give_up: bool = False) -> tuple[np.ndarray, str]:
        """:func:`settle` a block at a time on a support of ``size`` rows; returns the positions dropped
        as stalled and the kind of support used. The first block (:func:`pilot`) tries the ``kinds`` in
        turn; the rest of the pass uses the one that settled most. With ``give_up``, that first block
        is a pilot of ``_GIVE_UP_BLOCK`` tokens, and a block (the pilot or any other) in which fewer than
        ``_MIN_YIELD`` of the tokens get a certificate ends the pass."""
        stalled = []
        bounds = [*range(0, at.size, block), at.size]
        if give_up and at.size > 2 * _GIVE_UP_BLOCK:
            bounds = [0, *range(_GIVE_UP_BLOCK, at.size, block), at.size]
        kind, base = kinds[0], None
        for lo, hi in itertools.pairwise(bounds):
            part = at[lo:hi]
            if lo == 0:
                base, kind, dropped = pilot(part, steps, patience, size, kinds, give_up)
                stalled.append(dropped)
            else:
                base = base if base is not None else make(kind, size)
                stalled.append(part[settle(part, steps, patience, base)])
            if report is not None:
                report(int(part.size))
            proven = sum(out[k] is not None for k in part)
            if give_up and part.size >= _GIVE_UP_BLOCK and proven < _MIN_YIELD * part.size:
                skipped.extend(at[hi:].tolist())
                if report is not None and at.size > hi:
                    report(int(at.size - hi))
                break
        return (np.concatenate(stalled) if stalled else np.zeros(0, dtype=np.int64)), kind

    out: list[certify.CertificateCheck | None] = [None] * positions.size
    skipped: list[int] = []
    # Two kinds of support, because neither holds on every head: the rows farthest from the mean in
    # whitened coordinates held 64 of 64 under-trained rows of a real-like 50k x 640 head where 8d
    # random rows held none; on heads.py's LM-like rows (norms spread log-normally around a shared
    # mean) the farthest rows are mostly the longest ones, all displaced along the mean, and their
    # hull held 0 of 64 at 32768 x 512 where random rows held 47 (fp16's near-mean rows: 0 and 64).
    kinds = _SUPPORT_KINDS
    # Giving up is only safe where no later pass would take what the first leaves: the 16d pass
    # settles under-trained rows the 8d one misses (8192 x 256: 1 of 246 on 8d rows, the rest on 16d).
    # Below d = 1024 that later pass is the wide one alone: a first pass that gives up hands it the
    # rest at once.
    wide_next = d < _PERSIST_MIN_DIM and depth is not None
    later = d >= _PERSIST_MIN_DIM or wide_next
    stalled, kind = settle_blocks(np.arange(positions.size), steps, _PATIENCE, _FIRST * d, kinds, report=progress,
                                  give_up=give_up and (wide_next or not later))
    first_yield = sum(check is not None for check in out) / max(positions.size - len(skipped), 1)
    if wide_next:
        skipped.clear()
    if give_up:
        spent["skipped"] = float(len(skipped))
    # At large d the first steps can be slow for tokens that do converge: at 65536 x 4096, 28 of
    # 256 under-trained rows were dropped as stalled after 8 steps; searched again together with
    # 5 times the patience, all 28 converged and 27 were settled. Tokens outside the hull (no
    # weights exist) cost one more search per block of them.
    if d >= _PERSIST_MIN_DIM:
        settle_blocks(stalled, 2 * steps, 5 * _PATIENCE, _FIRST * d, (kind,))
    # Rows near the boundary of the 8d support's hull (their weights underflow, or the enclosure
    # refuses them) often sit well inside a wider one: at 32768 x 1024 (spread 0.05), 140 of 256
    # under-trained rows were settled on 8d rows and the other 116 all on 16d rows (24 s on 2
    # cores). One more pass, on twice the support, for whatever is left; skipped when the layer
    # has too few rows for a support much wider than the first.
    left = np.setdiff1d(np.array([k for k, check in enumerate(out) if check is None], dtype=np.int64),
                        np.array(skipped, dtype=np.int64))
    if d < _PERSIST_MIN_DIM:
        # Below it the exact step is quicker: the wide pass takes the rows the screen found deep
        # (_WIDE_DEPTH) and, where the first pass settled at least _MIN_YIELD of the rows it tried (they
        # are rows deep inside the hull, which a wider support holds too), every row it left. Where the
        # layer has few rows for its width the 8d rows' hull misses under-trained rows less deep than
        # that: undertrained 16384 x 768 sent 240 of its 492 to the exact step at 0.4 s each (audit
        # 120 s), and the wide pass settles 182 of them (audit 67 s; its ball twin 120 -> 72 s). Every
        # row left whatever the first pass settled cost SmolLM2 6 s for none of its 26 (1e-3 to 0.04
        # deep). With a bias the weights must also give sum lam_j b_j >= b_q, which only the lifted
        # search aims at (settle): on layernorm_ball 32768 x 512 the pass settled 111 more rows at
        # 0.16 s each against the exact step's 0.3-0.45.
        if depth is None:
            left = left[:0]
        elif first_yield < _MIN_YIELD:
            left = left[depth[left] >= _WIDE_DEPTH]
    if left.size and min(_WIDE * d, m) >= 1.5 * _FIRST * d:
        # The same rules as the first pass (a pilot on either kind of wide support, the yield of each
        # block); the kind the first pass used goes first.
        settle_blocks(left, 2 * steps, 5 * _PATIENCE, _WIDE * d, (kind, *(k for k in kinds if k != kind)),
                      give_up=give_up)
        if give_up:
            spent["skipped"] = float(len(skipped))
    if witnesses is not None and domain.screen_search == "rays":
        left = np.array([k for k, check in enumerate(out) if check is None], dtype=np.int64)
        if left.size >= _MIN_WITNESS_ROWS:
            t0 = time.perf_counter()
            _witness_pass(comp, positions, left, make(kind, _FIRST * d), domain, backend, witnesses, block)
            spent["witnesses"] = time.perf_counter() - t0
    return out


def _witness_pass(comp: Competitors, positions: np.ndarray, left: np.ndarray, base: _Support, domain, backend,
                  witnesses: dict[int, tuple[np.ndarray, float]], block: int) -> None:
    """Checked witnesses for the tokens ``positions[left]`` that lie outside the support's hull.

    Where a layer has few rows for its width, rows that look interior (under-trained rows near the
    mean) are often still vertices of the hull, by a hair: on undertrained 8192 x 1024 137 of the
    246 rows the screen left are argmaxable, and the exact step took 1.3 s for each. The search for
    certificate weights already tells them apart: for such a token its dual ``theta`` grows along a
    direction that separates the token's row from the support's (:func:`_max_entropy_weights` with
    ``directions``). Along that direction from the domain's anchor the token's score rises faster
    than any support row's; :func:`_ray_points` picks a point there, and only a point that
    :func:`certify.check_witnesses` proves against every row settles anything. Blocks go in the
    order given, the first of ``_GIVE_UP_BLOCK`` tokens: a block in which fewer than ``_MIN_YIELD``
    get a witness ends the pass.
    """
    d = comp.weight.shape[1]
    bounds = [0, *range(min(_GIVE_UP_BLOCK, left.size), left.size, block), left.size]
    for lo, hi in itertools.pairwise(bounds):
        part = left[lo:hi]
        pos = positions[part]
        support = base.without(comp, pos)  # a token is never its own rival
        if support.rows.size <= d + 1:
            return
        found = np.empty((d, pos.size))
        backend.on_device(lambda ops, pos=pos, found=found, support=support: _max_entropy_weights(
            support, comp.weight[pos], _SEPARATE_STEPS, 4, ops=ops, directions=found), "in the batched phase")
        points = _ray_points(comp, pos, found.T, domain)
        ok = np.isfinite(points).all(axis=1)
        gaps = np.full(pos.size, -np.inf)
        if ok.any():
            gaps[ok] = certify.check_witnesses(comp.weight, comp.bias, pos[ok], points[ok], domain, comp.norms)
        for k, x, gap in zip(part.tolist(), points, gaps, strict=True):
            if gap > 0:
                witnesses[k] = (x, float(gap))
        if np.count_nonzero(gaps > 0) < _MIN_YIELD * part.size:
            return


def _ray_points(comp: Competitors, pos: np.ndarray, directions: np.ndarray, domain) -> np.ndarray:
    """For each token, a point ``anchor + r u`` (u its unit direction, a row of ``directions``) where the
    token's score beats every row's, as float64 scores see it; NaN where none is seen in the domain.

    Along the ray every score is linear in r: the token's lead over row j is ``c_j + r s_j``. Where every
    slope s_j is positive the lead grows with r, so on a ball the point goes as far as it may (just inside
    the sphere) and on R^d to twice the r where the last lead turns positive. A hint: the caller's
    check proves the point or nothing.
    """
    out = np.full((pos.size, comp.weight.shape[1]), np.nan)
    length = np.linalg.norm(directions, axis=1)
    usable = np.isfinite(length) & (length > 0)
    if not usable.any():
        return out
    at = np.flatnonzero(usable)
    unit = directions[at] / length[at, None]
    anchor = domain.anchor()
    slopes = rows_times(comp.weight, unit.T)  # m x B
    base = matvec(comp.weight, anchor)
    if comp.bias is not None:
        base = base + comp.bias
    cols = np.arange(at.size)
    own = pos[at]
    slope = slopes[own, cols] - slopes  # the token's lead's slope over each row
    lead = base[own][None, :] - base[:, None]
    slope[own, cols], lead[own, cols] = np.inf, 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        turns = np.where(slope > 0, -lead / slope, np.inf).max(axis=0)  # r beyond which every lead is > 0
    reach = domain.ray_reach
    if np.isfinite(reach):
        far = np.full(at.size, reach * (1.0 - _INSET))
    else:
        far = np.where(turns > 0, 2.0 * turns, 1.0)
    ok = (slope > 0).all(axis=0) & (turns < far)
    out[at[ok]] = anchor + far[ok, None] * unit[ok]
    return out


# Below this d the exact step is fast and the two later passes cost more than they save (docs/benchmarks.md).
_PERSIST_MIN_DIM = 1024
_FIRST = 8  # rows per dimension in the first pass's support
_WIDE = 16  # rows per dimension in the last pass's support
_SAMPLE_SEED = 20261206  # the random support's rows (any fixed seed: only hints are drawn)
_SUPPORT_KINDS = ("outermost", "sampled")  # tried in this order on a pass's first block
# With a bias, the weights must also give sum_j lam_j b_j >= b_q: the search starts from weights tilted
# towards the rows of larger bias, lam_j ~ exp(_TILT (b_j - max b) / std(b)), and keeps the tilt while it
# matches the mean (it maximises _TILT sum lam_j b_j / std(b) plus the weights' entropy). Measured on
# the 162 under-trained rows of layernorm_ball 8192 x 256, each a certificate on R^d: 0 settled 75 of
# them, 1: 102, 2: 116, 2.5 and 3: 126, 4: none (the search stalls on weights that concentrated).
_TILT = 2.0
_BIAS_MARGIN = 3e-3  # how far above b_q, in the support's bias spread, the lifted search aims (_Support)
_SHORT = 1e-6  # weights whose bias falls this far (in that spread) below b_q skip the plain check
_BIAS_LEADERS = 0.25  # share of a sampled support, with a bias, taken from bias_leaders
_MIN_ROWS_OFF_RD = 16  # deep rows needed for the phase to run on a domain other than R^d
# The screen's depth (Guesses.depth) below which a token skips the phase: near-duplicate twins lead by
# 2e-5 to 6e-5 of the logits' scale, under-trained and planted rows by 0.03 to 1 (docs/benchmarks.md).
_SHALLOW = 1e-3
_WIDE_DEPTH = 0.04  # off R^d, tokens this deep enter the phase; below d = 1024, the 16d pass (see above)
_GIVE_UP_BLOCK = 64  # the pilot: a pass's first block, of this many of the deepest tokens
# A block of at least _GIVE_UP_BLOCK tokens of which fewer than this share get a certificate ends the
# pass: the rest, shallower, do worse. Where the block costs less than the exact step would spend on
# that share, the phase pays. Off R^d half of a block was once asked, for bounded boxes, where the exact
# step is cheap (15 ms a token on box_bias 32768 x 512); the phase no longer runs there (see run). What
# is left off R^d are balls and half-open boxes, where the exact step is dear: on swish_box 32768 x 512
# (85 ms a token there) the half asked stopped the phase after 154 of its 983 rows, and a quarter let
# it settle 388 in 9.8 s instead of 4.1 (the audit 84.8 -> 74.7 s); layernorm_ball (75 against 225 ms a
# settled row) and the 8192 x 256 heads settle the same either way.
_MIN_YIELD = 0.25
# The shared Hessian is built again once the block's average weights have moved this far (L1; they sum to
# 1) since it was last built, and at least every ``refresh`` steps: it only preconditions, and a token's
# own Hessian is far from any average (measured below). Every 4 steps, as before, built it 295 times on
# layernorm_ball 32768 x 512 (the search 20.1 s); on moves of 0.2, 170 times (16.9 s), the same steps to
# converge (median 39 -> 38); on 0.4, 110 times, but the tilted weights then took more (median 42).
# Undertrained there: its 147 builds every 4 steps -> 101, the same steps. A Hessian per group of 16
# tokens left the steps as they were (median 38 -> 37); each token's own (every 4 steps) 9, at 8 times
# the time.
_REBUILD_MOVE = 0.2
# ... but never sooner than this many steps after the last build: tokens outside the support's hull move
# their weights by more than that every step, and SmolLM2's 26 rows, all outside, built it at every step
# (search 0.46 -> 1.8 s).
_REBUILD_AFTER = 4
_PATIENCE = 8  # Newton steps before a token whose residual has not fallen tenfold is dropped (see below)
# The same for a pass's pilot block, where a pass's own patience is longer (the wide pass: 5 * _PATIENCE).
# On shallow 32768 x 512, whose 32 planted rows no support holds, the wide pass's pilot cost 3.7 s with
# 40 steps of patience (both kinds of support) and 1.4 s with 16; on undertrained 32768 x 512 the pilot
# with 16 settled 63 of 64, with 40 all 64 (8 steps: 60).
_PILOT_PATIENCE = 16
# Steps of the search for separating directions (_witness_pass): on undertrained 8192 x 1024, 64 rows
# of which 35 are argmaxable, 12 had one after 10 steps, 28 after 30, 33 after 40, 35 after 55; the
# whole head's 137 argmaxable rows left 108 witnesses with 40 steps (audit 208 s), 126 with 80 (166 s).
_SEPARATE_STEPS = 80
# Tokens left for the witness pass to run: its cost is mostly the block's (its K x d x d Hessians and
# products), so a handful are cheaper in the exact step. shallow 8192 x 1024: 3 s of search for none of
# its 6 planted rows (audit 14.9 -> 17.5 s); SmolLM2's 26 got 16 witnesses for 0.2 s more.
_MIN_WITNESS_ROWS = 16
_INSET = 1e-6  # a ray's point on a ball stays this far (relative to the radius) inside its sphere
# The columns (times d + 1) of largest average weight that the pivoted QR of _bases chooses among. On all
# K = 8d or 16d of them the QR took 3.5 s of swish_box 32768 x 512's batched phase (12 of them) and 1.5 s
# of layernorm_ball's (5); on 4(d + 1), 1.2 and 0.55 s, and every basis proved the same tokens (929 and
# 635 settled in the phase; 3(d + 1): 928, 2(d + 1): 926).
_QR_COLUMNS = 4
_QR_RETRY_MAX_DIM = 1024  # above this, a pivoted QR of the support costs more than it saves (see _check_block)


class _Support:
    """The support rows, with what every block needs of them prepared once: at 128k x 4096 the
    support is 32768 x 4096 (1 GB in float64), too big to gather, centre and move to a GPU per block."""

    def __init__(self, comp: Competitors, rows: np.ndarray):
        self.rows = rows
        weight = comp.weight[rows]
        self.dim = weight.shape[1]
        self.mean = weight.mean(axis=0)
        self.system = np.vstack([weight.T, np.ones((1, rows.size))])  # [W_S^T; 1], what certificates solve
        self.inverse: certify.BasisInverse | None = None  # the basis that last proved tokens (_check_block)
        self._centred: dict[bool, object] = {}
        self._centred_on: str | None = None
        self.bias = None if comp.bias is None else comp.bias[rows].astype(np.float64)
        # The bias as one more coordinate (see lifted_targets), scaled to the rows' average coordinate:
        # the search's tolerance is one number for every coordinate. None where it cannot help.
        self.bias_scale: float | None = None
        if self.bias is not None and float(self.bias.std()) > 0:
            spread = float(np.mean(np.var(weight, axis=0)))
            self.bias_scale = float(np.sqrt(spread) / self.bias.std()) if spread > 0 else None

    def without(self, comp: Competitors, rows: np.ndarray) -> _Support:
        """This support where it holds none of ``rows``, else one made of its other rows."""
        return self if not np.isin(rows, self.rows).any() else _Support(comp, np.setdiff1d(self.rows, rows))

    def centred(self, ops, lifted: bool = False, single: bool = False):
        """The centred rows where ``ops`` keep arrays (a GPU's memory), made once per place; ``lifted``
        appends the scaled, centred bias as a last column (both kept: blocks alternate between them);
        ``single``: a copy in the precision ``ops`` build the search's Hessian in (``ops.single``)."""
        if self._centred_on != ops.name:
            self._centred.clear()  # device copies are dropped before host ones are made (out of memory)
            self._centred_on = ops.name
        if (lifted, single) not in self._centred:
            if single:
                self._centred[lifted, single] = ops.single(self.centred(ops, lifted))
            else:
                rows = np.subtract(self.system[:-1].T, self.mean, order="C")
                if lifted:
                    rows = np.hstack([rows, (self.bias_scale * (self.bias - self.bias.mean()))[:, None]])
                self._centred[lifted, single] = ops.asarray(rows)
        return self._centred[lifted, single]

    def centre(self, lifted: bool = False) -> np.ndarray:
        """What :meth:`centred` subtracted from each row (0 for the lifted bias column: targets carry it)."""
        return np.append(self.mean, 0.0) if lifted else self.mean

    def lifted_targets(self, weight_rows: np.ndarray, bias_rows: np.ndarray) -> np.ndarray:
        """Targets for weights that match a token's row and *exceed* its bias: ``(w_q, b_q + margin)`` in
        :meth:`centred`'s lifted coordinates, the margin ``_BIAS_MARGIN`` of the support's bias spread.

        The plain search matches the row and only leans towards larger biases (the tilt); where its
        weights fall short of ``b_q`` (layernorm_ball 16384 x 384: 125 of 126 converged tokens, by a
        median 0.2 of the biases' spread), matching the bias too is what the certificate needs. A margin
        of 0 left the check a tie to decide (44 of 70 passed), 0.003 and 0.01 of the spread passed all.
        """
        above = bias_rows + _BIAS_MARGIN * float(self.bias.std()) - float(self.bias.mean())
        return np.hstack([weight_rows, (self.bias_scale * above)[:, None]])


def _check_block(comp: Competitors, pos: np.ndarray, support: _Support, lams: np.ndarray, converged: np.ndarray,
                 domain) -> list[certify.CertificateCheck | None]:
    """Checked certificates for one block, on bases of the support shared by its tokens.

    Bases are tried in turn, each on the tokens still refused (:func:`_bases`); the first that
    proves anything is kept for the next block, whose tokens usually sit in the same part of
    the hull: at d = 4096 a basis's verified inverse costs three d^3 products on the CPU, its
    use on a block only products of the support with the block's weights.
    """
    usable = np.isfinite(lams).all(axis=0)
    chosen = converged if converged.any() else usable
    checks: list[certify.CertificateCheck | None] = [None] * pos.size
    if not chosen.any():
        return checks
    refused = usable.copy()  # every token with weights, stragglers included
    for basis in _bases(support, lams, chosen, converged, refused):
        inverse = basis if isinstance(basis, certify.BasisInverse) else certify.invert_basis(
            support.system, np.sort(basis))
        if inverse is None:
            continue
        retry = np.flatnonzero(refused)
        again = certify.check_on_shared_basis(comp.weight, comp.bias, pos[retry], support.rows, lams[:, retry],
                                              inverse.basis, domain, system=support.system, inverse=inverse)
        for k, check in zip(retry, again, strict=True):
            checks[k] = check
            refused[k] = check is None
        if any(check is not None for check in again):
            support.inverse = inverse
        if not refused.any():
            break
    return checks


def _bases(support: _Support, lams: np.ndarray, chosen: np.ndarray, converged: np.ndarray, refused: np.ndarray):
    """Bases (d + 1 positions into the support, or a ready :class:`certify.BasisInverse`) to try, best first.

    1. the basis that last proved something, for an earlier block (no new inverse);
    2. the d + 1 rows of largest average weight over the tokens that converged: tokens hugging a
       face of the hull (stragglers that ran out of steps) put their weight on that face, and a
       basis taken from them is singular;
    3. the same over the converged tokens still refused (``refused`` is read when this is reached);
    4. up to ``_QR_RETRY_MAX_DIM``, a pivoted-QR basis of the weighted system (as
       :func:`certify._enclose` does for one token), among its ``_QR_COLUMNS (d + 1)`` heaviest
       columns. The QR costs about 16 d^3 flops there, at BLAS-2 speed: 4 GFLOP at d = 640, about
       10^12 at d = 4096, more than a block's whole search on a GPU.
    """
    d = support.dim
    tried: list[np.ndarray] = []

    def new(basis: np.ndarray) -> bool:
        """Whether ``basis`` was not tried yet for this block (a repeat costs an inverse: 10 s at d = 4096)."""
        if any(np.array_equal(basis, old) for old in tried):
            return False
        tried.append(basis)
        return True

    if support.inverse is not None:
        new(support.inverse.basis)
        yield support.inverse
    mean = lams[:, chosen].mean(axis=1)
    first = np.sort(np.argpartition(-mean, d)[: d + 1])
    if new(first):
        yield first
    left = refused & converged
    if left.any():
        again = np.sort(np.argpartition(-lams[:, left].mean(axis=1), d)[: d + 1])
        if new(again):
            yield again
    if d <= _QR_RETRY_MAX_DIM and (refused & converged).any():
        # Pivoting picks heavy, independent columns: only the _QR_COLUMNS (d + 1) heaviest are offered.
        wide = _QR_COLUMNS * (d + 1)
        top = np.arange(mean.size) if mean.size <= wide else np.argpartition(-mean, wide - 1)[:wide]
        _, _, order = linalg.qr(support.system[:, top] * mean[top], mode="economic", pivoting=True,
                                check_finite=False)
        pivoted = np.sort(top[order[: d + 1]])
        if new(pivoted):
            yield pivoted


def _max_entropy_weights(support: _Support, targets: np.ndarray, steps: int, refresh: int,
                         tol: float = 1e-10, stalled: float = 0.1, patience: int = _PATIENCE, ops=NUMPY_OPS,
                         tilt: np.ndarray | None = None, lifted: bool = False,
                         start: np.ndarray | None = None,
                         directions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Weights (K x B, columns on the simplex) ``lam ~ exp(theta_b . w_j)`` with ``W_S^T lam ~ targets[b]``.

    Newton directions from the average Hessian of the tokens still moving, made conjugate to
    each token's last one, each followed by an
    exact line search on its own token's dual objective: along a direction the scores move
    linearly, so the search needs no product, only the K scores per token. A target outside
    the rows' hull has no such weights (its theta grows without bound): after ``patience``
    steps, a token whose residual is still above ``stalled`` times its first one leaves the
    block with NaN weights, which the enclosure refuses; converged tokens leave too, so later
    steps cost only what is left. Also returns which tokens converged (residual <= ``tol``).
    ``ops`` (:mod:`.backend`) hold the arrays: numpy, or torch on a GPU. With ``lifted`` the rows
    carry the bias as a last coordinate and ``targets`` come from :meth:`_Support.lifted_targets`.
    ``start`` (K x B) are the first scores ``z`` (``lam ~ exp(z)``) in place of the tilt: the lifted
    search starts from the plain search's weights, whose row already matches (layernorm_ball
    16384 x 384: its searches 1.09 -> 0.79 s and 2.33 -> 2.10 s, the same tokens settled but one).

    With ``directions`` (a d x B array, filled in), the search looks for the other answer too: the
    dual variable ``theta`` of a token whose target lies outside the rows' hull grows along a
    direction that separates it from every row, and ``log sum_j exp(theta . c_j) - theta . g`` falls
    without bound. Tokens are then never dropped as stalled; one leaves as soon as its ``theta``
    scores its own row above every support row (``theta . g > max_j theta . c_j``), and each token's
    ``theta`` at the end goes into ``directions`` (NaN for those that converged: they are inside).
    Only without a tilt or a start, whose scores are not ``theta``'s.
    """
    centred, mean = support.centred(ops, lifted), support.centre(lifted)
    k, d = centred.shape
    goal = ops.asarray((targets - mean).T)  # d x B
    out = np.full((k, targets.shape[0]), np.nan)
    converged = np.zeros(targets.shape[0], dtype=bool)
    active = np.arange(targets.shape[0])
    z = ops.full((k, active.size), 0.0)  # scores centred_j . theta_b (+ the tilt)
    if start is not None:
        z = ops.asarray(start)
    elif tilt is not None:
        z = z + ops.asarray(tilt[:, None])
    lams = ops.exp(z - ops.amax(z, 0))
    lams = lams / lams.sum(axis=0)
    scale = max(1.0, float(np.abs(targets - mean).max()))
    first_residual = None
    factor, built, built_on = None, 0, None  # the shared Hessian's factor, its step and weights
    single = True  # built from float32 rows, until that fails once
    prev = None  # the last step's gradient, preconditioned gradient and direction
    separate = directions is not None
    theta = ops.full((d, active.size), 0.0) if separate else None
    if separate:
        directions[:] = np.nan
    for step in range(steps):
        grad = ops.t_times(centred, lams) - goal  # d x B
        residual = ops.amax(abs(grad), 0)
        if first_residual is None:
            first_residual = residual
        done = ops.numpy(residual <= tol * scale)
        if separate:  # theta beats every support row: its token is outside their hull
            lost = ops.numpy((theta * goal).sum(axis=0) > ops.amax(z, 0)) & ~done
            directions[:, active[lost]] = ops.numpy(theta[:, lost])
        else:
            lost = (step >= patience) & ops.numpy(residual > stalled * first_residual)
        if (done | lost).any():
            out[:, active[done]] = ops.numpy(lams[:, done])
            converged[active[done]] = True
            keep = ~(done | lost)
            active, goal, z, lams = active[keep], goal[:, keep], z[:, keep], lams[:, keep]
            grad, first_residual = grad[:, keep], first_residual[keep]
            if separate:
                theta = theta[:, keep]
            if prev is not None:
                prev = tuple(x[:, keep] for x in prev)
            if active.size == 0:
                return out, converged
        since = step - built
        if factor is None or since >= min(refresh, _REBUILD_AFTER):  # the average only when it may count
            average = lams.mean(axis=1)
            if (factor is None or since >= refresh
                    or (since >= _REBUILD_AFTER and float(abs(average - built_on).sum()) > _REBUILD_MOVE)):
                built, built_on = step, average
                factor, single = _shared_factor(support, ops, lifted, average, single)
                if factor is None:
                    break
        # The shared Hessian is each token's only roughly, so plain steps along it converge linearly.
        # Conjugate directions (Polak-Ribiere+, preconditioned by it) cost two sums a token: on 256
        # under-trained rows against 4096 random ones (32768 x 512) 231 converged within the 120
        # steps instead of 177, in 4.1 s instead of 5.8. Where the mix is no descent direction,
        # the plain step stands.
        pre = ops.cho_solve(factor, grad)
        direction = pre
        if prev is not None:
            grad_before, pre_before, direction_before = prev
            beta = (pre * (grad - grad_before)).sum(axis=0) / (pre_before * grad_before).sum(axis=0)
            beta = ops.where(ops.isfinite(beta) & (beta > 0), beta, 0.0)
            mixed = pre + beta * direction_before
            direction = ops.where((mixed * grad).sum(axis=0) > 0, mixed, pre)
        prev = (grad, pre, direction)
        moves = ops.rows_times(centred, direction)  # how each score changes per unit step
        alpha = _line_search(z, moves, (direction * goal).sum(axis=0), ops)
        z = z - alpha * moves
        if separate:
            theta = theta - alpha * direction
        lams = ops.exp(z - ops.amax(z, 0))
        lams = lams / lams.sum(axis=0)
    out[:, active] = ops.numpy(lams)  # out of steps: the enclosure judges what they reached
    if separate:
        directions[:, active] = ops.numpy(theta)
    return out, converged


def _shared_factor(support: _Support, ops, lifted: bool, weights, single: bool = True):
    """A Cholesky factor of the support's covariance under ``weights`` (the search's shared Hessian),
    or None where it is not positive definite even in float64; and whether float32 rows built it.

    Built from float32 rows where ``ops`` allow and ``single`` (it only preconditions; the steps and
    gradients stay float64): undertrained 32768 x 512, 18 -> 11 ms a build (K = 4096). Where float32
    rounding makes it indefinite, it is built again in float64, and the caller asks for float64 from
    then on: undertrained 2048 x 1024 (K about 2d, weights gathering on few rows) failed 7 of 21.
    """
    d = support.centred(ops, lifted).shape[1]
    for low in (True, False) if single else (False,):
        hessian = ops.covariance(support.centred(ops, lifted, single=low), weights)
        hessian[np.arange(d), np.arange(d)] += 1e-12 * max(float(hessian.diagonal().sum()) / d, 1e-300)
        factor = ops.cholesky(hessian)
        if factor is not None:
            return factor, low
    return None, False


def _line_search(z, moves, pull, ops=NUMPY_OPS, iterations: int = 6, settled: float = 1e-3):
    """Per column, the step a >= 0 minimising ``log sum_j exp(z_j - a moves_j) + a pull`` (convex in a).

    Safeguarded Newton from a = 1: the slope is ``pull - E[moves]`` and the curvature
    ``Var[moves]`` under the weights ``softmax(z - a moves)``. A column whose Newton update
    moved a by under ``settled`` of itself takes no further iterations: a = 1 is the shared
    Hessian's Newton step and most columns settle in two or three. A fixed three for every column
    settled the same rows on undertrained 32768 x 512 but 331 instead of 411 of layernorm_ball's
    (its tilted weights want exact steps); stopping per column settled 410 and 981 of 983, and the
    phase took 13.6 s instead of 18.1 there, 17.1 instead of 24.9 on undertrained.
    """
    columns = z.shape[1]
    lo = ops.full(columns, 0.0)
    hi = ops.full(columns, np.inf)
    a = ops.full(columns, 1.0)
    todo = None  # the columns still iterating (None: all of them)
    for _ in range(iterations):
        if todo is None:
            a_t, lo_t, hi_t, mean, second = a, lo, hi, *ops.softmax_moments(z, moves, a)
            p_t = pull
        else:
            a_t, lo_t, hi_t, p_t = a[todo], lo[todo], hi[todo], pull[todo]
            mean, second = ops.softmax_moments(z[:, todo], moves[:, todo], a_t)
        slope = p_t - mean
        curve = second - mean * mean
        lo_t = ops.where(slope < 0, a_t, lo_t)
        hi_t = ops.where(slope >= 0, a_t, hi_t)
        newton = a_t - slope / ops.where(curve > 0, curve, np.nan)
        inside = ops.isfinite(newton) & (newton > lo_t) & (newton < hi_t)
        new = ops.where(inside, newton, ops.where(ops.isfinite(hi_t), (lo_t + hi_t) / 2, 2 * a_t))
        moving = ops.numpy(~(inside & (abs(new - a_t) <= settled * a_t)))
        if todo is None:
            a, lo, hi = new, lo_t, hi_t
            todo = np.flatnonzero(moving)
        else:
            a[todo], lo[todo], hi[todo] = new, lo_t, hi_t
            todo = todo[moving]
        if todo.size == 0:
            break
    return a
