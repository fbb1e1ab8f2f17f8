"""``python -m producer_tools``: the user-side tools."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m producer_tools", description="User-side tools for tfstream.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser("demo", help="run the whole path on the embedded broker and summarise")
    demo.add_argument(
        "--bootstrap-servers",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
        help="use this Kafka, not the embedded broker [env KAFKA_BOOTSTRAP_SERVERS]",
    )
    demo.add_argument("--workdir", type=Path, default=Path("demo-output"), help="where the model and logs go")
    demo.add_argument("--count", type=int, default=400, help="inputs to publish (at most 400)")
    broker = commands.add_parser("broker", help="run the embedded broker in the foreground until Ctrl-C")
    broker.add_argument("--port", type=int, default=9092)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from producer_tools import demo

        if not 1 <= args.count <= 400:
            print("error: --count must be between 1 and 400", file=sys.stderr)
            return 2
        return demo.main(args.bootstrap_servers, args.workdir, args.count)
    if args.command == "broker":
        return run_broker(args.port)
    return 2


def run_broker(port: int) -> int:
    from producer_tools.embedded_broker import EmbeddedBroker

    with EmbeddedBroker(port=port) as broker:
        print(f"embedded broker ready on {broker.bootstrap_servers} (log: {broker.log_path}); Ctrl-C stops it")
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0
