"""``resdense list [backbones|heads|datasets|hooks|configs] [--imports MODULE ...]``: what can be built (the
registered architectures, datasets and hooks, a user's modules' too) and which recipes ship."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list backbones, heads (model.arch), datasets (data.dataset), hooks (train.hooks) "
                                    "and shipped recipes")
    p.add_argument("what", nargs="?", choices=("backbones", "heads", "datasets", "hooks", "configs"),
                   help="one section only")
    p.add_argument("--imports", nargs="+", default=[], metavar="MODULE",
                   help="import these modules first (from the working directory, as a recipe's imports: [...]) and "
                        "list their registrations too")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # deferred: the library loads torch (seconds); `resdense --help` should not wait for it
    from resdense.api import available

    for section, items in available(args.imports).items():
        if args.what and section != args.what:
            continue
        print(f"{section}:")
        for name, note in items:
            print(f"  {name:<34} {note}".rstrip())
    return 0
