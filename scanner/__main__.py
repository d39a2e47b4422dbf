"""`python -m scanner events|worker|mirror|rescan ...`: the scanner's processes and its one operator command.

    python -m scanner events --config FILE      the events forwarder on a registry host (scanner/events.py)
    python -m scanner worker --config FILE      a scanner worker (scanner/worker.py)
    python -m scanner rescan --config FILE      queue a rescan of every tagged digest now (what the nightly
                                                schedule sends), with a worker's config
    python -m scanner mirror --source REF --target HOST/REPO:TAG [--ca-file F] --username U --password-file F
                                                copy the Trivy database artifact (scanner/mirror.py); REF is
                                                HOST/REPO:TAG or oci:DIR:TAG

A configuration or argument mistake exits 2 with a message naming it; an unreachable service exits 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scanner.config import ConfigError, load_events_config, load_worker_config, read_secret


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scanner", description="Vulnerability scanning (practice 5).")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("events", "serve the registry's notifications and queue scans"),
        ("worker", "scan queued digests with Trivy and store reports"),
        ("rescan", "queue a rescan of every tagged digest (the nightly schedule's message)"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--config", type=Path, required=True)
    mirror = commands.add_parser("mirror", help="copy the Trivy database artifact into the registry")
    mirror.add_argument("--source", required=True, help="HOST/REPO:TAG or oci:DIR:TAG")
    mirror.add_argument("--target", required=True, help="HOST[:PORT]/REPO:TAG")
    mirror.add_argument("--ca-file", type=Path, help="the CA of the target's certificate")
    mirror.add_argument("--username", required=True)
    mirror.add_argument("--password-file", type=Path, required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "events":
            from scanner.events import run as run_events

            return run_events(load_events_config(args.config))
        if args.command == "worker":
            from scanner.worker import run as run_worker

            return run_worker(load_worker_config(args.config))
        if args.command == "rescan":
            from scanner.report import RESCAN_ALL_BODY

            config = load_worker_config(args.config)
            sqs = config.aws_client("sqs")
            message_id = sqs.send_message(QueueUrl=config.queue_url, MessageBody=RESCAN_ALL_BODY)["MessageId"]
            print(f"rescan-all queued on {config.queue_url} (message {message_id})")
            return 0
        from scanner.mirror import MirrorError, copy_artifact, open_source, parse_reference

        password = read_secret(args.password_file, "--password-file")
        try:
            target = parse_reference(args.target, "--target")
            ca = str(args.ca_file) if args.ca_file else None
            copy_artifact(open_source(args.source), target, (args.username, password), ca)
        except MirrorError as err:
            print(f"python -m scanner mirror: {err}", file=sys.stderr)
            return 1
        return 0
    except ConfigError as err:
        print(f"python -m scanner {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
