"""The engine: decide every token, each verdict with a checked certificate.

Stages, in the order :func:`audit` runs them (each a module you can read alone):

* :mod:`.screen` — guess a witness for every token at once, accept it with rigorous float32 bounds;
* :mod:`.exact` — constraint generation on the Chebyshev LP/SOCP for the rest, solved by :mod:`.ipm`
  (HiGHS and Clarabel as fallbacks);
* :mod:`.certify` — checks every witness and certificate without trusting the solver;
* :mod:`.precision` — the "practically unreachable" label; :mod:`.probability` — max-probability brackets;
* :mod:`.explain` — one token in depth (rivals, smallest bias increase).
"""

from .audit import AuditOptions, audit
from .exact import ExactOptions
from .explain import explain_token, render_explanation

__all__ = ["AuditOptions", "ExactOptions", "audit", "explain_token", "render_explanation"]
