"""What every command shares: one-line errors for mistakes a user can make, never a traceback.

A `UserError` says what went wrong and what to do; `@cli` prints it as one line on stderr and exits
with code 2; `parser()` makes an argparse parser whose own errors (a bad value, a missing argument)
take the same one-line path. Standard library only: the report imports it without torch.
"""

import argparse
import errno
import functools
import sys

# Write failures a user fixes (free space, a quota, a read-only mount), whichever file meets them first.
FULL_OR_READ_ONLY = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


class UserError(Exception):
    """A mistake in the user's input: reported as one line that says what to do, never a traceback."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)")


def parser(prog, doc, **kwargs):
    """An argument parser for `python -m PROG`, with the module docstring as its help text."""
    return OneLineParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


def cli(main):
    """Run a command-line entry point, turning a UserError, or a full or read-only disk, into one line on
    stderr and exit code 2."""

    @functools.wraps(main)
    def run(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
        except OSError as err:
            if err.errno not in FULL_OR_READ_ONLY:
                raise
            where = f" {err.filename}" if err.filename else ""
            print(
                f"error: cannot write{where} ({err.strerror}); free space or make the folder writable, then run "
                "the command again (a training run: --resume, from its last checkpoint)",
                file=sys.stderr,
            )
        sys.exit(2)

    return run
