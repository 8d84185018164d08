"""The ``resdense`` command line: parse, load, call the library. Nothing else lives here.

Each subcommand is a module in this package exposing ``register(subparsers)``; it sets ``func`` on its parser. The
subcommand modules import only argparse at the top and the library inside ``run``: importing it loads torch,
torchvision and smp (about 5 s on a 2-core machine), which ``resdense --help`` and argument errors need not wait for
(0.06 s). tests/test_architecture.py lists where such function-level imports of resdense's own modules are allowed.
Errors derived from :class:`resdense.errors.ResdenseError` are printed as one line and exit with code 2 (bad
input), 1 (a file that could not be written) or 128 + N (training stopped by signal N: 130 for Ctrl-C, 143 for
SIGTERM).
"""

from __future__ import annotations

import argparse
import logging
import sys

from resdense.errors import ResdenseError

from . import classify, data, demo, new, predict, summary, train
from . import eval as eval_cmd
from . import export as export_cmd
from . import list as list_cmd

# Explicit list: adding a subcommand means adding its module here.
_COMMANDS = (summary, data, new, train, eval_cmd, predict, export_cmd, demo, classify, list_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resdense", description="ResNet backbones for dense prediction.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except ResdenseError as err:
        from resdense.engine.distributed import main_process  # the engine (torch) loads only where it is used

        if main_process() or not getattr(err, "every_rank", False):  # torchrun: one line, not one per process
            print(f"resdense {args.command}: error: {err}", file=sys.stderr)
        return getattr(err, "exit_code", 2)
    except FileNotFoundError as err:
        print(f"resdense {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the OS refused something outside resdense's own writer: still one line
        print(f"resdense {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C outside training (which stops after its step): one line, as a shell reports it
        print(f"resdense {args.command}: interrupted", file=sys.stderr)
        return 130


__all__ = ["main", "build_parser"]
