"""Compare every stack's `fleet plan --json` and `fleet audit --format json` with another commit's.

    .venv/bin/python tests/compare_plans.py [BASE]      (BASE defaults to HEAD)

A refactoring must not change what any stack deploys or how it scores. This checks out BASE in a
temporary git worktree, runs both commands for every stack in `stacks/` there and here with the same
interpreter, and prints the differences. The program registers resources concurrently, so the plan is
compared as a set of resources keyed by (type, name, parent), each with its inputs; the audit is
compared as it is printed. Exit status 0 when every stack is the same, 1 otherwise.
"""

from __future__ import annotations

import difflib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def stacks(tree: Path) -> list[str]:
    return sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in (tree / "stacks").glob("Pulumi.*.yaml"))


def fleet(tree: Path, *args: str) -> Any:
    done = subprocess.run([sys.executable, "-m", "fleet", *args], cwd=tree, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{tree}: fleet {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout)


def normal_plan(plan: dict[str, Any]) -> dict[str, Any]:
    resources = {
        f"{r['type']} {r['name']} (parent {r['parent']})": {k: v for k, v in r.items() if k not in {"type", "name"}}
        for r in plan["resources"]
    }
    if len(resources) != len(plan["resources"]):
        raise SystemExit(f"stack {plan['stack']}: two resources share a type, name and parent")
    return {"stack": plan["stack"], "resources": dict(sorted(resources.items())), "outputs": plan["outputs"]}


def lines(value: Any) -> list[str]:
    return json.dumps(value, indent=2, sort_keys=True).splitlines()


def compare(base: Path, head: Path) -> int:
    names = stacks(head)
    if stacks(base) != names:
        print(f"stacks differ: base {stacks(base)}, here {names}")
        return 1
    failures = 0
    for stack in names:
        for label, args, normal in (
            ("plan", ("plan", "--json", stack), normal_plan),
            ("audit", ("audit", "--format", "json", stack), lambda v: v),
        ):
            before, after = normal(fleet(base, *args)), normal(fleet(head, *args))
            if before == after:
                print(f"{stack:16} {label:5} same")
                continue
            failures += 1
            print(f"{stack:16} {label:5} DIFFERS")
            diff = difflib.unified_diff(lines(before), lines(after), "base", "here", lineterm="", n=2)
            print("\n".join(list(diff)[:200]))
    return 1 if failures else 0


def main(argv: list[str]) -> int:
    base_rev = argv[0] if argv else "HEAD"
    with tempfile.TemporaryDirectory(prefix="compare-plans-") as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(base), base_rev], cwd=ROOT, check=True)
        try:
            return compare(base, ROOT)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
