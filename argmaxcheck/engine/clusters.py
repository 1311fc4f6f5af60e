"""Stage: rows within a hair of each other, decided as one cluster.

Classes a model never learned often keep nearly the same weights: PP-OCRv5's recogniser has
3,263 rows within 1e-5 of each other. The exact step finds each of them hard (its nearest rows
are its cluster mates, a hair away) and spends a solve on every one. Here a cluster asks one
question instead: does it lie inside the hull of the rows *outside* it?

1. The open rows are grouped: two rows whose weights (and biases) differ by less than
   ``_RADIUS`` of their length are in one cluster (:func:`near_duplicate_groups`).
2. One member per cluster, the one nearest its centre, goes through the blocked exact step
   with every other member left out of its competitors (:func:`block_exact.solve_blocks`,
   ``exclude``). Its certificate, if it finds one, is an ordinary checked certificate for it,
   and says that the cluster lies inside.
3. The mates of a cluster with at least 2(d + 1) of them are decided together from d + 1 solves
   at the corners of a simplex around the cluster's core (:func:`simplex_certificates`); on a
   domain without open sides the representative's own weights are tried on each mate; the
   rest are solved with the representative's rows in their first working set (one round,
   where they took several).

Every verdict is a certificate checked for that member; a member whose check fails, and every
member of a cluster whose representative is not proven inside, stays open for the exact step.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import scipy.linalg
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..report.stats import StageStats
from . import block_exact, certify
from ._blas import rows_times
from .competitors import Competitors
from .exact import settle_or_reopen

if TYPE_CHECKING:
    from .state import AuditState

_RADIUS = 1e-4  # rows closer than this fraction of their length (bias included) share a cluster
_PAIR_BYTES = 64 << 20  # the block of pairwise products held at once
_CORE = 1e-5  # a cluster's simplex is fitted to the members this close to its centre (relative)
_ASK_BLOCK = 64  # clusters whose question is asked together; a block with none inside ends the asking


def run(state: AuditState) -> StageStats | None:
    """Stage: clusters of near-duplicate open rows, one exact question each."""
    ids = state.open_ids()
    options = state.options
    if ids.size < 2 or not options.block_exact or options.exact_all:
        return None
    t0 = time.perf_counter()
    comp, domain = state.comp, state.solve_domain
    positions = state.position[ids]
    groups = near_duplicate_groups(comp, positions)
    if not groups:
        return None
    t1 = time.perf_counter()
    members = int(sum(g.size for g in groups))
    state.progress.stage("near-duplicate clusters", members)
    groups.sort(key=lambda g: -g.size)  # the largest clusters save the most solves: first
    reps = np.array([g[_central(comp, positions[g])] for g in groups])
    outs: list = []
    for lo in range(0, len(groups), _ASK_BLOCK):
        part = slice(lo, lo + _ASK_BLOCK)
        outs += block_exact.solve_blocks(comp, positions[reps[part]], domain, _starts(state, ids[reps[part]]),
                                         options.exact, exclude=[positions[g] for g in groups[part]])
        # Clusters outside the hull (twins that both win somewhere) gain nothing from the question:
        # when a whole block of them has none inside, the rest is left to the exact step.
        if len(outs) - lo >= _ASK_BLOCK and not any(_inside(out) for out in outs[lo:]):
            break
    groups, reps = groups[:len(outs)], reps[:len(outs)]
    t2 = time.perf_counter()
    settled = proven = by_simplex = 0
    rest, excluded, seeds = [], [], []
    no_equalities = not domain.open_coordinates().any()
    for group, rep, out in zip(groups, reps.tolist(), outs, strict=True):
        state.progress.advance(1)
        if out is None or (out.witness is None and not _inside(out)):
            continue
        settled += settle_or_reopen(state, int(ids[rep]), out, "cluster")
        if out.witness is not None:  # it wins even against its mates: the cluster is not inside
            continue
        proven += 1
        mates = group[group != rep]
        if mates.size >= 2 * (comp.weight.shape[1] + 1):  # many mates: d + 1 solves may decide them all
            found = simplex_certificates(comp, positions[mates], positions[group], domain, options.exact)
            by_simplex += _record(state, ids[mates], found)
            mates = mates[[check is None for check in found]]
        if no_equalities:  # a domain without open sides: the representative's weights may do
            cert = out.certificate
            found = certify.check_certificates(comp.weight, comp.bias, positions[mates], cert.support,
                                               np.repeat(cert.weights[:, None], mates.size, axis=1), domain)
            found = [check if check.ok else None for check in found]
            settled += _record(state, ids[mates], found)
            mates = mates[[check is None for check in found]]
        rest.append(mates)
        excluded += [positions[group]] * mates.size
        seeds += [out.certificate.support] * mates.size
    settled += by_simplex
    t3 = time.perf_counter()
    if rest:
        rest = np.concatenate(rest)
        outs = block_exact.solve_blocks(comp, positions[rest], domain, _starts(state, ids[rest]), options.exact,
                                        exclude=excluded, seeds=seeds, progress=state.progress.advance)
        for k, out in zip(rest.tolist(), outs, strict=True):
            if out is not None:
                settled += settle_or_reopen(state, int(ids[k]), out, "cluster")
    return StageStats("cluster", members, settled,
                      parts={"grouping": t1 - t0, "representatives": t2 - t1, "mates' certificates": t3 - t2,
                             "members": time.perf_counter() - t3},
                      counts={"clusters": len(groups), "representatives proven inside": proven,
                              "mates from a simplex": by_simplex})


def simplex_certificates(comp: Competitors, rows: np.ndarray, cluster: np.ndarray, domain, options,
                         budget_bytes: int = 256 << 20) -> list[certify.CertificateCheck | None]:
    """Checked certificates, or None, for the cluster members at ``rows`` from d + 1 solves in all.

    In its principal axes the cluster's core fills a box; a simplex holds that box (the simplex
    ``y >= -1, sum(y + 1) <= 2d`` holds ``[-1, 1]^d``), so each core member is a convex combination
    of its d + 1 corners with known weights ``mu``. Each corner is given the members' highest bias
    and solved against the rows outside the cluster (the nearest ones, within ``budget_bytes``).
    If every corner is inside their hull, with weights ``lam_i``, then ``sum_i mu_i lam_i`` averages
    to about the member's own row with at least its bias: a certificate for it once the exact
    equalities are enclosed. The corners' weights are the solver's, unchecked (they are no
    verdicts); each member's combination is checked as any certificate is (on R^d, on one basis
    shared by the cluster). Nothing is settled when a corner is not clearly inside; members
    outside the core's simplex are left as they are.
    """
    n, d = comp.weight.shape
    none: list[certify.CertificateCheck | None] = [None] * rows.size
    w = comp.weight[rows]
    centre = w.mean(axis=0)
    # The core: a chain of rows can join a few farther ones to a cluster (PP-OCRv5: 74 rows at up to
    # 1e-4 beside 3,263 within 1e-5), whose corners would then lie outside the hull.
    core = np.linalg.norm(w - centre, axis=1) <= _CORE * max(float(np.linalg.norm(centre)), 1e-300)
    if core.sum() <= d:
        return none
    centre = w[core].mean(axis=0)
    offsets = w - centre
    _, _, axes = np.linalg.svd(offsets[core], full_matrices=False)
    if axes.shape[0] < d:
        return none
    coords = offsets @ axes.T
    extent = np.abs(coords[core]).max(axis=0) * 1.01 + 1e-9 * float(np.abs(w).max())
    corners = np.full((d + 1, d), -1.0)
    corners[1:] += 2 * d * np.eye(d)
    vertices = centre + (corners * extent) @ axes
    y = coords / extent
    mu = np.empty((rows.size, d + 1))
    mu[:, 1:] = (y + 1) / (2 * d)
    mu[:, 0] = 1.0 - mu[:, 1:].sum(axis=1)
    at = np.flatnonzero((mu >= 0).all(axis=1))
    outside = np.setdiff1d(np.arange(n), cluster)
    room = max(4 * (d + 1), budget_bytes // (8 * d))
    if outside.size > room:  # the rows nearest the cluster: a certificate over some rows holds for all
        near = comp.sq_norms[outside] - 2 * (comp.weight[outside] @ centre)
        outside = np.sort(outside[np.argpartition(near, room - 1)[:room]])
    bias = None
    if comp.bias is not None:
        bias = np.concatenate([comp.bias[outside], np.full(d + 1, comp.bias[rows].max())])
    corner_rows = np.arange(outside.size, outside.size + d + 1)
    sub = Competitors(np.vstack([comp.weight[outside], vertices]), bias)
    outs = block_exact.solve_blocks(sub, corner_rows, domain, None, options, exclude=[corner_rows] * (d + 1),
                                    unchecked=True)
    if not all(out is not None and out.certificate is not None and out.chebyshev_radius < -1e-7
               and np.isfinite(out.certificate.weights).all() for out in outs):
        return none
    support = np.unique(np.concatenate([out.certificate.support for out in outs]))
    lam = np.zeros((support.size, d + 1))
    for i, out in enumerate(outs):
        lam[np.searchsorted(support, out.certificate.support), i] = out.certificate.weights
    lams = lam @ mu[at].T  # one column per member
    real = outside[support]
    if domain.whole_space:
        # A well-conditioned basis among the heavy columns: the corners' weights meet their
        # equalities only to the solver's tolerance, and the basis's inverse multiplies that.
        system = np.vstack([comp.weight[real].T, np.ones((1, real.size))])
        _, pivots = scipy.linalg.qr(system * lams.mean(axis=1), mode="r", pivoting=True)
        basis = np.sort(pivots[: d + 1])
        checks = certify.check_on_shared_basis(comp.weight, comp.bias, rows[at], real, lams, basis, domain)
    else:
        checks = certify.check_certificates(comp.weight, comp.bias, rows[at], real, lams, domain)
        checks = [check if check.ok else None for check in checks]
    out = list(none)
    for k, check in zip(at.tolist(), checks, strict=True):
        out[k] = check
    return out


def _inside(out) -> bool:
    """Whether a representative's solve proved it inside the hull of the rows outside its cluster."""
    return out is not None and out.certificate is not None and out.certificate.ok


def _starts(state: AuditState, ids: np.ndarray) -> np.ndarray | None:
    return state.guesses.at(ids) if state.guesses is not None else None


def _record(state: AuditState, ids: np.ndarray, checks: list) -> int:
    """Settle the rows ``ids`` whose entry of ``checks`` is a checked certificate; returns how many."""
    done = [(int(i), check) for i, check in zip(ids.tolist(), checks, strict=True) if check is not None]
    for i, check in done:
        state.unargmaxable(i, check, "cluster")
    state.progress.advance(len(done))
    return len(done)



def near_duplicate_groups(comp: Competitors, positions: np.ndarray, radius: float = _RADIUS) -> list[np.ndarray]:
    """Clusters (indices into ``positions``, two or more each) of rows within ``radius`` of each other.

    Distances are between the rows with their biases, relative to the longer row; each row is
    linked to the first and last row of its neighbourhood and the links' connected components
    are the clusters (a chain may join rows farther apart: nothing relies on a cluster's width,
    every member's certificate is checked). The pairwise products cost ``m^2 d`` for ``m`` open
    rows: no more than one product of the layer, and far less whenever the screen leaves few.
    """
    m = positions.size
    lifted = comp.weight[positions]
    if comp.bias is not None:
        lifted = np.column_stack([lifted, comp.bias[positions]])
    sq = np.einsum("ij,ij->i", lifted, lifted)
    block = max(1, _PAIR_BYTES // (8 * m))
    first = np.arange(m)
    last = np.arange(m)
    for lo in range(0, m, block):
        hi = min(m, lo + block)
        cross = np.asarray(rows_times(lifted, lifted[lo:hi].T)).T  # (hi - lo, m)
        dist = sq[lo:hi, None] + sq[None, :] - 2 * cross
        close = dist <= radius**2 * np.maximum(sq[lo:hi, None], sq[None, :])
        close[np.arange(hi - lo), np.arange(lo, hi)] = False
        has = close.any(axis=1)
        first[lo:hi] = np.where(has, close.argmax(axis=1), first[lo:hi])
        last[lo:hi] = np.where(has, m - 1 - close[:, ::-1].argmax(axis=1), last[lo:hi])
    linked = np.flatnonzero(first != np.arange(m))
    if not linked.size:
        return []
    src = np.concatenate([linked, linked])
    dst = np.concatenate([first[linked], last[linked]])
    graph = coo_matrix((np.ones(src.size), (src, dst)), shape=(m, m))
    _, label = connected_components(graph, directed=False)
    order = np.argsort(label, kind="stable")
    bounds = np.flatnonzero(np.diff(label[order])) + 1
    return [g for g in np.split(order, bounds) if g.size > 1]


def _central(comp: Competitors, rows: np.ndarray) -> int:
    """Index (into ``rows``) of the row nearest the rows' mean."""
    w = comp.weight[rows]
    return int(np.argmin(np.linalg.norm(w - w.mean(axis=0), axis=1)))
