"""The exceptions the CLI turns into one clear line: `UserError` (exit 2) and `GuardStopped` (exit 3); and
`UnigapWarning`, a warning it prints as one line (`UnigapDeprecationWarning` too)."""

import errno


class UserError(ValueError):
    """A mistake in the user's input (bad file, bad prompt, bad flag value): not a bug in unigap. A `ValueError`, so
    that scripts calling the Python API catch it where Python's own bad-value errors are caught."""


class UnigapWarning(UserWarning):
    """Something the user may have got wrong but that need not stop the work (an unknown word, a name that shadows a
    folder): the CLI prints it as one `unigap: warning:` line."""


class UnigapDeprecationWarning(UnigapWarning, FutureWarning):
    """An input the public API used to accept and will refuse in a later release (a `FutureWarning`: shown to the
    user of a script, not only to its developer): it is still read as before, meanwhile."""


class GuardStopped(Exception):
    """An audit against an independent judge stopped a self-supervised run (the CLI exits with code 3)."""


INTERRUPTED = 130  # the exit code of a command stopped by ^C (the shell's, and typer's)
# The file system refusing a write mid-run (a full disk or quota, a read-only or forbidden folder): not a mistake in
# the command but a state the user can fix and continue from; the CLI says so in one line, exit 1 (nothing half
# written is left: results are written atomically). Writers pass these on rather than calling them bad input.
STORAGE_REFUSED = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
FIRST_LINE_CHARS = 400  # torch's "Missing key(s) in state_dict: ..." lists every key on one line


def first_line(exc: BaseException) -> str:
    """An exception's first line (libraries' messages can run to many), joined with the next where the first only
    introduces it (torch's "Error(s) in loading state_dict for PeftModel:"), or its type's name when it has none."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    line = f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    return line if len(line) <= FIRST_LINE_CHARS else line[: FIRST_LINE_CHARS - 1] + "…"
