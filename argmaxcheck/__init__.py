"""argmaxcheck: prove, token by token, whether any input can make a softmax row the argmax.

Public API::

    from argmaxcheck import audit, Box, Ball, Unbounded
    report = audit(W, b, domain=Box.symmetric(100.0))
    report.unargmaxable      # token ids that can never win, each with a checked certificate
"""

from .domains import Ball, Box, Unbounded
from .engine import AuditOptions, audit
from .errors import InputError
from .exact import ExactOptions
from .layer import OutputLayer
from .report import AuditReport, TokenResult

__all__ = [
           "AuditOptions",
           "AuditReport",
           "Ball",
           "Box",
           "ExactOptions",
           "InputError",
           "OutputLayer",
           "TokenResult",
           "Unbounded",
           "audit",
]
__version__ = "0.1.0"
