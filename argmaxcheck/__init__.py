"""argmaxcheck: prove, token by token, whether any input can make a softmax row the argmax.

The pipeline, one sub-package per stage (docs/architecture.md)::

    sources/  (a file or folder -> LoadedLayer)  ->  engine/  (audit)  ->  report/  (AuditReport, gate, formats)

Public API::

    from argmaxcheck import audit, Box, Ball, Unbounded
    report = audit(W, b, domain=Box.symmetric(100.0))
    report.unargmaxable      # token ids that can never win, each with a checked certificate
"""

from .domains import Ball, Box, Unbounded
from .engine import AuditOptions, ExactOptions, explain_token
from .errors import InputError
from .integrations import ArgmaxCallback, assert_all_argmaxable, audit
from .layer import OutputLayer
from .report import AuditReport, TokenResult
from .report.gate import Baseline, GatePolicy
from .report.gate import evaluate as evaluate_gate

__all__ = [
           "ArgmaxCallback",
           "AuditOptions",
           "AuditReport",
           "Ball",
           "Baseline",
           "Box",
           "ExactOptions",
           "GatePolicy",
           "InputError",
           "OutputLayer",
           "TokenResult",
           "Unbounded",
           "assert_all_argmaxable",
           "audit",
           "evaluate_gate",
           "explain_token",
]
__version__ = "0.1.0"
