"""What every command shares: one-line errors for mistakes a user can make, never a traceback.

A `UserError` says what went wrong and what to do; `@cli` prints it as one line on stderr and exits
with code 2; `parser()` makes an argparse parser whose own errors (a bad value, a missing argument)
take the same one-line path. Standard library only: the report imports it without torch.
"""

import argparse
import errno
import functools
import sys

# Failures of the file system a user fixes, whichever file meets them first: what to do about each.
REMEDIES = {
    errno.ENOSPC: "free space on that disk",
    errno.EDQUOT: "free space within your quota",
    errno.EROFS: "use a folder on a writable file system",
    errno.EACCES: "give yourself access to it, or use another folder",
    errno.EPERM: "give yourself access to it, or use another folder",
}


class UserError(Exception):
    """A mistake in the user's input: reported as one line that says what to do, never a traceback."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)")


def parser(prog, doc, **kwargs):
    """An argument parser for `python -m PROG`, with the module docstring as its help text."""
    return OneLineParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


def cli(main=None, *, resumable=False):
    """Run a command-line entry point, turning a UserError, a file-system failure a user fixes (a full disk, a
    quota, a read-only mount, a permission) or Ctrl-C into one line on stderr: exit code 2 (130 for Ctrl-C).
    `resumable`: the command is training, whose remedy is to resume the run rather than start it again."""
    if main is None:
        return functools.partial(cli, resumable=resumable)
    then = "resume the run with --resume, from its last checkpoint" if resumable else "run the command again"

    @functools.wraps(main)
    def run(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
        except OSError as err:
            if err.errno not in REMEDIES:
                raise
            where = f"{err.filename}: " if err.filename else ""
            print(f"error: {where}{err.strerror}; {REMEDIES[err.errno]}, then {then}", file=sys.stderr)
        except KeyboardInterrupt:  # before a run's signal handlers are in place, or a second Ctrl-C during its stop
            print(f"error: interrupted (Ctrl-C); what was already written is whole: {then}", file=sys.stderr)
            sys.exit(130)
        sys.exit(2)

    return run
