"""The report: verdicts as plain data (:mod:`.model`), the CI gate (:mod:`.gate`), and the formats that
render both (:mod:`.formats`). Strings from model files are escaped for each format by :mod:`.escape`."""

from .escape import escape_token
from .model import (
    ARGMAXABLE,
    MARGIN_DOC,
    PRACTICAL,
    SCHEMA_VERSION,
    UNARGMAXABLE,
    UNDECIDED,
    VERDICTS,
    AuditReport,
    TokenResult,
)

__all__ = ["ARGMAXABLE", "MARGIN_DOC", "PRACTICAL", "SCHEMA_VERSION", "UNARGMAXABLE", "UNDECIDED", "VERDICTS",
           "AuditReport", "TokenResult", "escape_token"]
