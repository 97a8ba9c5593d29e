"""The one error type of the package's commands, and the one way every command prints it.

A user mistake (a bad option, unusable data, a checkpoint that does not fit) is a
``UsageError``; ``run_command`` prints it as one ``error: ...`` line on stderr and exits with
status 2, before anything is written. The library's own functions raise the usual Python types
(ValueError, FileNotFoundError) and the commands turn them into UsageErrors where they call them.
"""

from __future__ import annotations

import argparse
import os
import sys


class UsageError(Exception):
    """A user mistake: one line on stderr, exit status 2, nothing written. ``quiet``: exit 2
    without a line (a rank of a distributed run stopping because another one reported the cause).
    ``local``: raised by this rank alone (e.g. its data), so it says it even if it is not rank 0."""

    local = False

    def __init__(self, message, quiet=False):
        super().__init__(message)
        self.quiet = quiet


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes are UsageErrors (one line, exit 2) instead of usage + exit."""

    def __init__(self, doc: str, **kwargs):
        head, _, rest = doc.partition("\n\n")
        super().__init__(description=head, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter,
                         **kwargs)

    def error(self, message):
        raise UsageError(message)


def run_command(main, argv=None) -> int:
    """Runs a command's ``main(argv)`` and returns its exit status: main's if it returns an int,
    else 0; 2 for a UsageError (printed as ``error: ...``), 130 for Ctrl-C, 1 for a closed pipe
    (e.g. piped into ``head``)."""
    try:
        status = main(argv)
        return status if isinstance(status, int) else 0
    except UsageError as e:
        if not e.quiet:
            print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stop quietly; point stdout at /dev/null so the exit flush is silent
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def first_line(e: BaseException) -> str:
    """An exception's first line (its type name if it has no text)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
