"""Staged verdicts against --exact-all, on tokens drawn from every stage of real heads.

For each case of bench_real_heads.py: audit the head as a user would (identical rows, screen,
exact step, best margins), draw up to ``--per-stage`` tokens from every (stage, verdict) pair,
audit those tokens again with ``exact_all=True`` (no screen: every token goes through the
per-token solver from the domain's centre) and print, per pair, how many verdicts agree.
Disagreements are listed with both answers; the exit code is 1 if there is any.

Usage: ``python benchmarks/check_exact_all.py --cases whisper,smollm2,ppocr --gguf PATH --whisper PATH``
(where these come from: docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_real_heads import case_arguments, load_cases

from argmaxcheck import AuditOptions, audit


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    case_arguments(parser)
    parser.add_argument("--per-stage", type=int, default=20, help="tokens drawn from each (stage, verdict)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    disagreements = 0
    for name, layer, domain, tokens, _ in load_cases(args):
        t0 = time.perf_counter()
        staged = audit(layer, domain=domain, tokens=tokens, options=AuditOptions(probability_seconds=0))
        groups = defaultdict(list)
        for t in staged.tokens:
            groups[(t.stage, t.verdict)].append(t.id)
        drawn = sorted(int(i) for ids in groups.values()
                       for i in rng.choice(ids, min(args.per_stage, len(ids)), replace=False))
        reference = audit(layer, domain=domain, tokens=drawn,
                          options=AuditOptions(exact_all=True, probability_seconds=0))
        ref = {t.id: t.verdict for t in reference.tokens}
        by_index = {t.id: t for t in staged.tokens}
        print(f"== {name}: {len(drawn)} tokens drawn from {len(groups)} (stage, verdict) groups,"
              f" {time.perf_counter() - t0:.0f} s")
        for (stage, verdict), ids in sorted(groups.items()):
            picked = [i for i in drawn if by_index[i].stage == stage and by_index[i].verdict == verdict]
            same = sum(ref[i] == verdict for i in picked)
            print(f"   {stage:>10} {verdict:<24} {same}/{len(picked)} agree (of {len(ids)} in the group)")
            for i in picked:
                if ref[i] != verdict:
                    disagreements += 1
                    print(f"      DISAGREE token {i}: staged {verdict}, exact-all {ref[i]}"
                          f" ({by_index[i].reason or ''})")
    print(f"disagreements: {disagreements}")
    return 1 if disagreements else 0


if __name__ == "__main__":
    raise SystemExit(main())
