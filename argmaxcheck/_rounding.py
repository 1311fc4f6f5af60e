"""Unit roundoffs and the dot-product error bound shared by the domains and the certificate checks.

``gamma`` is twice Higham's ``gamma_k = k u / (1 - k u)``, a bound on the relative
error of a k-term dot product in IEEE arithmetic with round-to-nearest (Higham,
*Accuracy and Stability of Numerical Algorithms*, ch. 3); see
:mod:`argmaxcheck.engine.certify`.
"""

from __future__ import annotations

U64 = 2.0**-53
U32 = 2.0**-24
# Smallest subnormals: a product or a cast that underflows errs by up to half of one, absolutely,
# which no relative bound covers. The audit scales layers to max |w| near 1, so these terms are
# tiny, but they keep every bound true for rows with very small entries.
ETA64 = 2.0**-1074
ETA32 = 2.0**-149


def gamma(k: int, unit: float) -> float:
    """Twice Higham's gamma_k: a bound on the relative error of a k-term dot product."""
    ku = k * unit
    return 2.0 * ku / (1.0 - ku)
