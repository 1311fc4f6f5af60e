"""The one exception type the library raises for bad input."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input: a file, array, row or option that cannot be audited as given.

    The message is one line that names the thing at fault. The command line
    prints it and exits with status 2.
    """
