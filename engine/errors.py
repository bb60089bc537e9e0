"""What every command shares: one-line errors for mistakes a user can make, never a traceback.

A `UserError` says what went wrong and what to do; `@cli` prints it as one line on stderr and exits
with code 2; `parser()` makes an argparse parser whose own errors (a bad value, a missing argument)
take the same one-line path. Standard library only: the report imports it without torch.
"""

import argparse
import functools
import sys


class UserError(Exception):
    """A mistake in the user's input: reported as one line that says what to do, never a traceback."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)")


def parser(prog, doc, **kwargs):
    """An argument parser for `python -m PROG`, with the module docstring as its help text."""
    return OneLineParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


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
