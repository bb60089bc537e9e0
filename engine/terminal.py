"""How every command prints: a rich console that never wraps a message and, when its output is not a terminal
(a log file, a pipe, a CI log), is wide enough that a table keeps its cells whole instead of 80 columns."""

from rich.console import Console

WIDTH_OFF_A_TERMINAL = 200


def console(file=None, stderr=False):
    """A console on `file` (default: stdout, or stderr)."""
    probe = Console(file=file, stderr=stderr)
    width = None if probe.is_terminal else WIDTH_OFF_A_TERMINAL
    return Console(file=file, stderr=stderr, soft_wrap=True, width=width)
