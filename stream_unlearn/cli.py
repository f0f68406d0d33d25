"""The ``stream-unlearn`` command line: a thin dispatcher.

Each subcommand lives in its own module, which provides an
``add_*_arguments(parser)`` function and a ``main_*`` entry point returning
an exit code; this module only wires them together.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _run_broker(args: argparse.Namespace) -> int:
    from .broker import main_broker

    return main_broker(args.port)


def _run_produce(args: argparse.Namespace) -> int:
    from .producer import main_produce

    return main_produce(args)


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import main_demo

    return main_demo(args)


def _run_worker(args: argparse.Namespace) -> int:
    from .worker import main_worker

    return main_worker(args)


def _run_inspect(args: argparse.Namespace) -> int:
    from .inspect_cmd import main_inspect

    return main_inspect(args)


def _run_verify(args: argparse.Namespace) -> int:
    from .inspect_cmd import main_verify

    return main_verify(args)


def _run_model(args: argparse.Namespace) -> int:
    from .model_cmd import main_model

    return main_model(args)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    from .config import add_worker_arguments
    from .demo import add_demo_arguments
    from .inspect_cmd import add_inspect_arguments, add_verify_arguments
    from .model_cmd import add_model_arguments
    from .producer import add_produce_arguments

    parser = argparse.ArgumentParser(
        prog="stream-unlearn",
        description="Exact machine unlearning for k-means on Kafka streams.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("broker", help="run an embedded Kafka-protocol broker (Tansu, in memory)")
    p.add_argument("--port", type=int, default=9092, help="port on 127.0.0.1 (0 = any free port; default %(default)s)")
    p.set_defaults(func=_run_broker)

    p = sub.add_parser("produce", help="send insert/delete events from files")
    add_produce_arguments(p)
    p.set_defaults(func=_run_produce)

    p = sub.add_parser("worker", help="consume insert/delete topics into an exactly-forgetting model")
    add_worker_arguments(p)
    p.set_defaults(func=_run_worker)

    p = sub.add_parser("inspect", help="show a snapshot (centroids, points, offsets); read-only")
    add_inspect_arguments(p)
    p.set_defaults(func=_run_inspect)

    p = sub.add_parser("verify", help="refit a snapshot's points and compare bit for bit (exit 0 if equal)")
    add_verify_arguments(p)
    p.set_defaults(func=_run_verify)

    p = sub.add_parser("model", help="print the global model merged from the partition summaries topic")
    add_model_arguments(p)
    p.set_defaults(func=_run_model)

    p = sub.add_parser("demo", help="stream the paper's Gaussian mixture, delete, verify, report")
    add_demo_arguments(p)
    p.set_defaults(func=_run_demo)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the subcommand, return its exit code."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
