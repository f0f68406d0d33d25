"""The ``stream-unlearn`` command line: a thin dispatcher.

Each subcommand lives in its own module, which provides an
``add_*_arguments(parser)`` function and a ``main_*`` entry point returning
an exit code; this module only wires them together.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

#: name -> (help, module, its add-arguments function, its entry point).
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "broker": ("run an embedded Kafka-protocol broker (Tansu, in memory)", "broker", "add_broker_arguments",
               "run_broker"),
    "produce": ("send insert/delete events from files", "producer", "add_produce_arguments", "main_produce"),
    "worker": ("consume insert/delete topics into an exactly-forgetting model", "worker",
               "add_worker_arguments", "main_worker"),
    "inspect": ("show a snapshot (centroids, points, offsets); read-only", "inspect_cmd",
                "add_inspect_arguments", "main_inspect"),
    "verify": ("refit a snapshot's points and compare bit for bit (exit 0 if equal)", "inspect_cmd",
               "add_verify_arguments", "main_verify"),
    "model": ("print the global model merged from the partition summaries topic", "model_cmd",
              "add_model_arguments", "main_model"),
    "demo": ("stream the paper's Gaussian mixture, delete, verify, report", "demo", "add_demo_arguments", "main_demo"),
}

# Where a subcommand's arguments are defined, when not in its own module.
_ARGUMENTS_MODULE = {"worker": "config"}


def _entry(module: str, function: str) -> Callable[[argparse.Namespace], int]:
    """The entry point, imported when the subcommand runs (the worker pulls in Kafka)."""

    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(f"{__package__}.{module}"), function)(args)

    return run


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="stream-unlearn",
        description="Exact machine unlearning for k-means on Kafka streams.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, module, add_arguments, entry) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        home = importlib.import_module(f"{__package__}.{_ARGUMENTS_MODULE.get(name, module)}")
        getattr(home, add_arguments)(p)
        p.set_defaults(func=_entry(module, entry))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the subcommand, return its exit code."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
