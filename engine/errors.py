"""Errors a user can cause, and the one-line exit that reports them."""
import functools
import sys


class UserError(Exception):
    """A mistake in the user's input: reported as one line that says what to do, never a traceback."""


def cli(main):
    """Run a command-line entry point, turning a UserError into one line on stderr and exit code 2."""

    @functools.wraps(main)
    def run(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return run
