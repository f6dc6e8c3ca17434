"""The `fewlabels` command.

Each command lives in ``fewlabels.commands.<name>`` with ``add_parser`` and ``run``; this
module builds the parser from them, runs the one asked for, and turns what a user can fix into
one line on stderr and exit status 2, without a traceback. Warnings print as one clean line.

``fewlabels pretrain --method NAME --help`` shows that method's options and no other
method's: the method is read from the command line before the parser is built.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from typing import Any

from fewlabels.commands import COMMANDS, build_parser, command_module
from fewlabels.errors import UserError

__all__ = ["COMMANDS", "build_parser", "main"]


def _one_line_warning(message: Any, category: type[Warning], filename: str, lineno: int,
                      file: Any = None, line: str | None = None) -> None:  # noqa: ARG001
    """Warnings from our code print as ``fewlabels: warning: ...``, without the source line."""
    text = str(message).splitlines()[0] if str(message) else category.__name__
    print(f"fewlabels: warning: {text}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `fewlabels` command; returns the exit status."""
    from fewlabels.engine.trainer import TrainingInterrupted

    argv = list(sys.argv[1:] if argv is None else argv)
    previous = warnings.showwarning
    warnings.showwarning = _one_line_warning
    try:
        args = build_parser(argv).parse_args(argv)
        command_module(args.command).run(args)
    except UserError as error:
        print(f"fewlabels: error: {error}", file=sys.stderr)
        return 2
    except TrainingInterrupted as stop:
        print(f"fewlabels: {stop}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("fewlabels: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = previous
    return 0


if __name__ == "__main__":
    sys.exit(main())
