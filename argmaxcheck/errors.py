"""The one exception type the library raises for bad input."""

from __future__ import annotations

from ._text import printable


class InputError(ValueError):
    """Bad input: a file, array, row or option that cannot be audited as given.

    The message is one line that names the thing at fault. The command line
    prints it and exits with status 2. Messages often quote paths and tensor
    names read from model files, so ``str()`` shows every non-printable
    character as its escape (ESC as ``\\x1b``, a newline as ``\\n``): the line
    cannot clear a terminal, break into several lines or forge a CI annotation.
    ``args[0]`` keeps the message as given.
    """

    def __str__(self) -> str:
        return printable(super().__str__())
