"""`python -m fleet`: the operator CLI. Thin commands over testable cores.

A user mistake (a bad stack file, an unknown stack, a bad argument) exits 2 with a message
naming what is wrong; a bug exits with a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from infra.settings import STACKS_DIR, SettingsError, available_stacks, load_stack_settings

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Something the user can fix; printed without a traceback."""


# --- validate ---------------------------------------------------------------------------


def validate(stack: str, out: TextIO, stacks_dir: Path = STACKS_DIR) -> None:
    settings = load_stack_settings(stack, stacks_dir=stacks_dir)
    print(
        f"stack {stack}: valid ({settings.environment}, team {settings.team}, "
        f"{settings.registry_host}, {settings.region} -> {settings.replica_region})",
        file=out,
    )


# --- plan -------------------------------------------------------------------------------


def plan_document(stack: str, stacks_dir: Path = STACKS_DIR) -> dict[str, Any]:
    """What `pulumi up` would create for the stack: the recorded graph, secrets redacted."""
    from components.errors import ComponentInputError
    from fleet.engine import REDACTED, record, redact

    settings = load_stack_settings(stack, stacks_dir=stacks_dir)
    try:
        recording = record(settings)
    except ComponentInputError as err:
        raise UserError(f"stack {stack}: {err}") from None
    names = {r.urn: r.name for r in recording.resources}
    resources = [
        {
            "type": r.type,
            "name": r.name,
            "parent": names.get(r.parent) if r.parent else None,
            "provider": names.get(r.provider) if r.provider else None,
            "inputs": redact(r.inputs),
        }
        for r in recording.resources
    ]
    outputs = {
        key: (REDACTED if key in recording.secret_outputs else redact(value))
        for key, value in sorted(recording.outputs.items())
    }
    return {"stack": stack, "resources": resources, "outputs": outputs}


def plan_text(doc: dict[str, Any]) -> str:
    """Resources grouped by their component, with counts per type."""
    resources = doc["resources"]
    by_name = {r["name"]: r for r in resources if not r["type"].startswith("pulumi:providers:")}
    components = [r for r in resources if r["type"].startswith("registry-fleet:")]

    def top_component(r: dict[str, Any]) -> str:
        node = r
        while node.get("parent") and node["parent"] in by_name:
            parent = by_name[node["parent"]]
            if parent["type"].startswith("registry-fleet:") and not parent.get("parent"):
                return str(parent["name"])
            node = parent
        return "(stack)"

    groups: dict[str, Counter[str]] = defaultdict(Counter)
    for r in resources:
        if r["type"].startswith("registry-fleet:") and not r.get("parent"):
            continue
        groups[top_component(r)][r["type"]] += 1
    custom = sum(1 for r in resources if not r["type"].startswith("registry-fleet:"))
    lines = [f"stack {doc['stack']}: pulumi up would create {custom} resources in {len(components)} components"]
    kinds = {r["name"]: r["type"].rsplit(":", 1)[-1] for r in components}
    for group in sorted(groups, key=lambda g: (g == "(stack)", g)):
        counts = groups[group]
        title = f"{kinds.get(group, 'stack')} {group!r}" if group != "(stack)" else "stack level (providers)"
        lines.append(f"\n{title}: {sum(counts.values())}")
        for typ, n in sorted(counts.items()):
            lines.append(f"  {n:3d}  {typ}")
    lines.append("\noutputs:")
    for key, value in doc["outputs"].items():
        shown = value if isinstance(value, str) and "\n" not in value else json.dumps(value)[:60]
        lines.append(f"  {key}: {shown}")
    return "\n".join(lines)


def plan(stack: str, as_json: bool, out: TextIO, stacks_dir: Path = STACKS_DIR) -> None:
    doc = plan_document(stack, stacks_dir=stacks_dir)
    out.write(json.dumps(doc, indent=2, sort_keys=False) + "\n" if as_json else plan_text(doc) + "\n")


# --- entry point ------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's exit code is 2 too; keep its usage line
        self.print_usage(sys.stderr)
        raise UserError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m fleet", description="registry-fleet operator commands")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    stacks = ", ".join(available_stacks()) or "none"
    p = sub.add_parser("validate", help="check a stack file against the settings model (no Pulumi engine)")
    p.add_argument("stack", help=f"stack name ({stacks})")
    p = sub.add_parser("plan", help="what `pulumi up` would create, from the real program under mocks")
    p.add_argument("stack", help=f"stack name ({stacks})")
    p.add_argument("--json", action="store_true", help="machine-readable: every resource with its inputs")
    return parser


def main(
    argv: Sequence[str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    stacks_dir: Path = STACKS_DIR,
) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        args = build_parser().parse_args(argv)
        if args.command == "validate":
            validate(args.stack, out, stacks_dir=stacks_dir)
        elif args.command == "plan":
            plan(args.stack, args.json, out, stacks_dir=stacks_dir)
    except SettingsError as e:
        print(f"error: {e}", file=err)
        return EXIT_USER_ERROR
    except UserError as e:
        print(f"error: {e}", file=err)
        return EXIT_USER_ERROR
    return 0
