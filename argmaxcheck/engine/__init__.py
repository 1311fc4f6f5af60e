"""The engine: decide every token, each verdict with a checked certificate.

:func:`audit` runs :data:`STAGES` in order over one :class:`~.state.AuditState` (each stage a
module you can read alone, with ``run(state) -> StageStats | None``):

* :mod:`.ties` — rows that repeat another row's weights: dominated or tied;
* :mod:`.screen` — guess a witness for every token at once, accept it with rigorous float32 bounds;
* :mod:`.batched` — on R^d, shared-basis certificates for rows deep inside the hull;
* :mod:`.exact` — constraint generation on the Chebyshev LP/SOCP for the rest, solved by :mod:`.ipm`
  (HiGHS and Clarabel as fallbacks, :mod:`.solvers`);
* :mod:`.precision` — the "practically unreachable" label; :mod:`.probability` — max-probability brackets.

:mod:`.certify` checks every witness and certificate without trusting the solver;
:mod:`.explain` looks at one token in depth (rivals, smallest bias increase).
"""

from .audit import STAGES, audit
from .explain import explain_token, render_explanation
from .options import AuditOptions, ExactOptions

__all__ = ["STAGES", "AuditOptions", "ExactOptions", "audit", "explain_token", "render_explanation"]
