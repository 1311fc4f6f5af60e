"""The exit statuses of ``argmaxcheck``, defined once for every command (``audit``, ``explain``, ``diff``,
``sweep``) and the help text that lists them."""

from __future__ import annotations

import signal

EXIT_OK = 0  # the gate passed; diff: no token lost reachability; sweep: every source audited and passed
EXIT_FOUND = 1  # the gate failed; explain: the token is not argmaxable; diff: some token lost reachability
EXIT_USAGE = 2  # bad input or usage, one line on stderr; sweep: some source could not be loaded or audited
EXIT_INTERNAL = 3  # an internal error, a bug
EXIT_SIGNAL_BASE = 128  # killed by a signal: 128 + its number, as shells report it
EXIT_INTERRUPTED = EXIT_SIGNAL_BASE + signal.SIGINT  # 130: Ctrl-C
EXIT_TERMINATED = EXIT_SIGNAL_BASE + signal.SIGTERM  # 143: SIGTERM while writing reports

EXIT_CODES = (
    "exit status:\n"
    f"  {EXIT_OK}    the gate passed (by default: every audited token is argmaxable); diff: no token lost"
    " reachability\n"
    f"  {EXIT_FOUND}    the gate failed (see --fail-on, --ignore, --baseline); diff: some token argmaxable in A is not"
    " in B\n"
    f"  {EXIT_USAGE}    bad input or usage: one line on stderr names the file, tensor, row or option; nothing is"
    " written\n"
    f"  {EXIT_INTERNAL}    internal error (a bug): one line on stderr; --debug shows the traceback\n"
    f"  {EXIT_INTERRUPTED}  interrupted (Ctrl-C); {EXIT_TERMINATED}: terminated (SIGTERM) while writing reports,"
    " none left half-written\n"
)
