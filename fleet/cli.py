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
from typing import TYPE_CHECKING, Any, TextIO

from infra.settings import STACKS_DIR, SettingsError, TokenAccess, available_stacks, load_stack_settings

if TYPE_CHECKING:
    from fleet.runner import StackOutputs

EXIT_FAILED = 1  # the command ran and found a problem (an audit failure)
EXIT_USER_ERROR = 2


OPERATIONS = ("maintenance", "restore", "gc", "retention")  # storage operations: fleet/operations.py


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
    access = settings.access
    if isinstance(access, TokenAccess):
        directory = access.ldap.url if access.ldap else "no directory"
        print(
            f"  access: token mode, {len(access.teams)} team(s), {len(access.users)} local user(s), "
            f"{len(access.robots)} robot(s), {directory}; the secrets registry-fleet:accessUserHashes"
            f"{' and registry-fleet:ldapBindPassword' if access.ldap else ''} are checked by pulumi preview/up "
            "(this offline check cannot decrypt them)",
            file=out,
        )
    else:
        print("  access: htpasswd mode (one admin account that may do everything)", file=out)
    from infra.settings import protected_namespaces, signed_namespaces

    signing = settings.signing
    protected = ", ".join(signed_namespaces(settings)) or (
        "none" if protected_namespaces(settings) else "none (no gate)"
    )
    print(
        f"  signing: {len(signing.signer_roles)} signer role(s)"
        f"{', a break-glass role' if signing.break_glass_role else ''}; pulls need a signature in: {protected}",
        file=out,
    )
    scanned = sorted(set(protected_namespaces(settings)) - set(signed_namespaces(settings)))
    if scanned:
        print(
            f"  scanning: pulls need a scan report (and no finding over the threshold) in: {', '.join(scanned)}",
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


# --- bootstrap and stack new ----------------------------------------------------------------


def bootstrap_backend(region: str, name: str, out: TextIO) -> bool:
    """Create (or check) the Pulumi state bucket and secrets key; False when an existing one is weaker."""
    from fleet.bootstrap import BootstrapInputError, bootstrap, login_lines, validate_name, validate_region

    try:
        validate_name(name)
        validate_region(region)
        import boto3

        result = bootstrap(
            name, region, boto3.client("s3", region_name=region), boto3.client("kms", region_name=region)
        )
    except BootstrapInputError as e:
        raise UserError(str(e)) from None
    for line in result.created:
        print(f"created: {line}", file=out)
    for line in result.unchanged:
        print(f"unchanged: {line}", file=out)
    if result.weaker:
        print(f"bucket {result.bucket} exists with weaker settings; nothing was changed:", file=out)
        for line in result.weaker:
            print(f"  - {line}", file=out)
        return False
    if not result.created:
        print("nothing to do: the backend is already in place", file=out)
    print("next:", file=out)
    for line in login_lines(result, region):
        print(f"  {line}", file=out)
    return True


def stack_new(team: str, env: str, template: str | None, out: TextIO, stacks_dir: Path = STACKS_DIR) -> None:
    from fleet.stacknew import StackNewError, new_stack
    from infra.settings import PROJECT_FILE

    try:
        path, commands = new_stack(team, env, template, stacks_dir=stacks_dir, project_file=PROJECT_FILE)
    except StackNewError as e:
        raise UserError(str(e)) from None
    print(f"wrote {path}", file=out)
    print("next:", file=out)
    for command in commands:
        print(f"  {command}", file=out)


# --- promote ----------------------------------------------------------------------------


def promote_stack(args: argparse.Namespace, out: TextIO, err: TextIO, stacks_dir: Path) -> bool:
    """Run the promotion gates, then `up` through the Automation API; False when `up` failed."""
    from fleet.audit import audit_stack
    from fleet.promote import PromotionFailed, PromotionRefused, promote
    from fleet.runner import AutomationRunner, RunnerError

    try:
        promote(
            to_env=args.to_env,
            from_env=args.from_env,
            stack=args.stack,
            commit=args.commit,
            allow_replace=args.allow_replace,
            runner=AutomationRunner(policy_packs=["policy"]),
            audit=lambda s: audit_stack(s, stacks_dir=stacks_dir).passed,
            validate=lambda s: load_stack_settings(s, stacks_dir=stacks_dir),
            out=lambda line: print(line, file=out, flush=True),
        )
    except (PromotionRefused, RunnerError) as e:
        raise UserError(str(e)) from None
    except PromotionFailed as e:
        print(f"error: {e}", file=err)
        return False
    return True


# --- audit ------------------------------------------------------------------------------


def audit(stacks: list[str], fmt: str, out: TextIO, stacks_dir: Path = STACKS_DIR) -> bool:
    """Print the scorecard of each stack; True when every stack passed."""
    from fleet.audit import audit_stack, render

    cards = [audit_stack(stack, stacks_dir=stacks_dir) for stack in stacks]
    out.write(render(cards, fmt) + "\n")
    return all(card.passed for card in cards)


# --- trust-policy ---------------------------------------------------------------------------


def trust_policy(args: argparse.Namespace, out: TextIO, stacks_dir: Path, runner: StackOutputs | None = None) -> None:
    """Print (or write) a consumer's trust policy for the stack's protected namespaces."""
    from auth.access import covers
    from fleet.runner import AutomationRunner, RunnerError
    from fleet.trust_policy import (
        TrustPolicyError,
        TrustTarget,
        public_key_from_file,
        public_key_from_lab_status,
        public_key_from_outputs,
        render,
        write_containers,
    )
    from infra.settings import signed_namespaces

    settings = load_stack_settings(args.stack, stacks_dir=stacks_dir)
    if args.lab and args.public_key:
        raise UserError("trust-policy: --lab reads the lab's public key; leave out --public-key")
    if args.output_dir and args.format != "containers":
        raise UserError("trust-policy: --output-dir writes the containers files; the other formats print one document")
    namespaces = tuple(args.namespace) or signed_namespaces(settings)
    access = settings.access
    owned = [ns for team in access.teams.values() for ns in team.namespaces] if isinstance(access, TokenAccess) else []
    for ns in args.namespace:
        if not any(ns == team_ns or covers(team_ns, ns) for team_ns in owned):
            raise UserError(f"trust-policy: --namespace {ns}: no team of stack {args.stack} owns it")
    host = settings.registry_host
    try:
        if args.public_key:
            pem = public_key_from_file(Path(args.public_key))
        elif args.lab:
            from lab.lab import Lab, LabError

            try:
                status = Lab.status(lab_dir(args.stack, args.state_dir))
            except LabError as e:
                raise UserError(str(e)) from None
            pem = public_key_from_lab_status(status)
            host = str(status["registry_url"]).removeprefix("https://").rstrip("/")
        else:
            reader = runner if runner is not None else AutomationRunner()
            try:
                outputs = reader.stack_outputs(args.stack)
            except RunnerError as e:
                raise UserError(f"{e} (or pass the key with --public-key FILE)") from None
            pem = public_key_from_outputs(args.stack, outputs)
        t = TrustTarget(args.stack, host, tuple(sorted(set(namespaces))), pem)
    except TrustPolicyError as e:
        raise UserError(f"trust-policy: {e}") from None
    if args.output_dir:
        for path in write_containers(t, Path(args.output_dir)):
            print(f"wrote {path}", file=out)
        return
    out.write(render(t, args.format))


# --- lab --------------------------------------------------------------------------------

LAB_ROOT = Path(__file__).resolve().parent.parent / ".lab"


def lab_dir(stack: str, state_dir: str | None) -> Path:
    return Path(state_dir) if state_dir else LAB_ROOT / stack


def accounts_table(accounts: list[dict[str, Any]]) -> list[str]:
    """One line per lab account: name, kind, lab-only password (or robot token), what it may do."""
    if not accounts:
        return []
    name_w = max(len(a["name"]) for a in accounts)
    pass_w = max(len(a["password"]) for a in accounts)
    return [f"  {a['name']:{name_w}}  {a['kind']:9}  {a['password']:{pass_w}}  {a['summary']}" for a in accounts]


def auth_line(status: dict[str, Any]) -> str:
    auth = status["auth"]
    if auth["mode"] != "token":
        return "htpasswd (one lab user: every signed-in user may do everything)"
    return f"token service at {auth['realm']} (service {auth['service']}, issuer {auth['issuer']})"


def lab_up(stack: str, detach: bool, state_dir: str | None, out: TextIO, stacks_dir: Path = STACKS_DIR) -> None:
    import signal
    import time

    from infra.settings import signed_namespaces
    from lab import supervisor
    from lab.demo import demo_protected_repository, push_and_pull, scanned_push, signed_pull
    from lab.lab import Lab, LabError

    settings = load_stack_settings(stack, stacks_dir=stacks_dir)
    directory = lab_dir(stack, state_dir)
    started = time.monotonic()
    try:
        state = Lab(settings, directory).up()
    except LabError as e:
        raise UserError(str(e)) from None
    took = time.monotonic() - started
    try:
        demo = push_and_pull(state)
        protected = demo_protected_repository(state)
        gated = signed_pull(state, protected) if protected else None
        scanned = scanned_push(state)
        status = Lab.status(directory)
    except BaseException:
        Lab.down(directory)
        raise
    host = state.registry_url.removeprefix("https://")
    table = "\n".join(accounts_table(state.accounts))
    signing = ""
    if state.signing:
        signing = f"""
  signing    key {state.signing["alias"]} in the lab's KMS, public key {state.signing["public_key_file"]}
             pulls need a signature in: {", ".join(signed_namespaces(settings)) or "none"}
             nginx sends the gates the manifest reads of: {", ".join(state.signing["namespaces"])}"""
    if gated is not None:
        image = gated.image.removeprefix(host + "/")
        signing += f"""
  unsigned   pull of {gated.image} refused: {gated.refused}
  signed     python -m fleet sign {stack} {image} --lab: {gated.signed}
             the same pull is served ({gated.digest}); check: python -m fleet verify {stack} {image} --lab"""
    print(
        f"""lab for stack {stack} is up ({took:.1f}s); state in {state.state_dir}
  registry   {state.registry_url}   (nginx as the load balancer, two registry instances behind it)
  auth       {auth_line(status)}
  CA file    {state.ca_file}
  CDN edge   {state.edge_url}   key pair id {state.key_pair_id}
  sample     {demo.image}  {demo.digest}
             ({demo.layers} layers, pushed as {state.username}; pulled back through the edge: {demo.edge_bytes} bytes)\
{signing}
{scanned.describe()}
accounts (lab-only passwords; what each may do: python -m fleet lab status {stack} --json):
{table}
try:
  skopeo copy --src-cert-dir {state.cert_dir} --src-creds {state.username}:{state.password} \\
    docker://{host}/{state.sample_repo}:1 oci:/tmp/sample:1""",
        file=out,
        flush=True,
    )
    if detach:
        print(f"detached: stop it with python -m fleet lab down {stack}", file=out)
        return
    print("press Ctrl-C to stop the lab", file=out, flush=True)
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stop:
            for name, svc in state.services.items():
                if not supervisor.pid_alive(int(svc["pid"])):
                    raise UserError(f"lab process {name} died; last log lines:\n{supervisor.log_tail(svc['log'])}")
            time.sleep(1)
    finally:
        stopped = Lab.down(directory)
        print(f"lab stopped ({', '.join(stopped)})", file=out)


def lab_status(stack: str, as_json: bool, state_dir: str | None, out: TextIO) -> None:
    from lab.lab import Lab, LabError

    try:
        status = Lab.status(lab_dir(stack, state_dir))
    except LabError as e:
        raise UserError(str(e)) from None
    if as_json:
        out.write(json.dumps(status, indent=2) + "\n")
        return
    print(f"lab {status['stack']}: {status['registry_url']} (CA {status['ca_file']})", file=out)
    print(f"  auth: {auth_line(status)}", file=out)
    for proc in status["processes"]:
        ports = ", ".join(f"{k} {v}" for k, v in proc["ports"].items())
        print(f"  {proc['name']:11} pid {proc['pid']:<7} {ports:28} {proc['health']}", file=out)
    print("accounts (lab-only passwords; --json says what each may do):", file=out)
    for line in accounts_table(status["accounts"]):
        print(line, file=out)


def lab_down(stack: str, state_dir: str | None, out: TextIO) -> None:
    from lab.lab import Lab, LabError

    try:
        stopped = Lab.down(lab_dir(stack, state_dir))
    except LabError as e:
        raise UserError(str(e)) from None
    print(f"lab {stack} stopped ({', '.join(stopped)})", file=out)


# --- sign and verify ----------------------------------------------------------------------


def signing_target(args: argparse.Namespace, stacks_dir: Path) -> tuple[Any, Any]:
    """(Target, ImageRef) for `sign`/`verify`: the deployed stack's registry and key, or with --lab the
    running lab's. Exit 2 for an unknown stack, a lab not running, a malformed image reference."""
    from fleet.signing import SignError, deployed_target, lab_target
    from signing.references import ImageReferenceError, parse_image

    settings = load_stack_settings(args.stack, stacks_dir=stacks_dir)
    try:
        if args.lab:
            from lab.lab import LabError, LabState

            try:
                state = LabState.load(lab_dir(args.stack, args.state_dir).resolve())
            except LabError as e:
                raise UserError(str(e)) from None
            target = lab_target(state, args.username)
        else:
            target = deployed_target(args.stack, settings.registry_host, settings.region, args.username)
        image = parse_image(args.image, target.registry_host)
    except (SignError, ImageReferenceError) as e:
        raise UserError(str(e)) from None
    if getattr(args, "public_key", None):
        try:
            target.public_keys = [Path(args.public_key).read_text()]
        except OSError as e:
            raise UserError(f"--public-key {args.public_key}: {e.strerror}") from None
    return target, image


def sign_image(args: argparse.Namespace, out: TextIO, stacks_dir: Path) -> None:
    from fleet.signing import SignError, sign

    target, image = signing_target(args, stacks_dir)
    optional = None
    if args.annotation:
        pairs = [a.partition("=") for a in args.annotation]
        bad = [a for a, (k, sep, _) in zip(args.annotation, pairs, strict=True) if not k or not sep]
        if bad:
            raise UserError(f"--annotation {bad[0]!r}: KEY=VALUE")
        optional = {k: v for k, _, v in pairs}
    try:
        sign(target, image, args.recursive, out, optional)
    except SignError as e:
        raise UserError(str(e)) from None


def verify_image(args: argparse.Namespace, out: TextIO, stacks_dir: Path) -> bool:
    from fleet.signing import SignError, report, verify
    from signing.verify import PublicKeyError

    target, image = signing_target(args, stacks_dir)
    try:
        result = verify(target, image)
    except (SignError, PublicKeyError) as e:
        raise UserError(str(e)) from None
    report(result, out)
    return result.valid


# --- entry point ------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's exit code is 2 too; keep its usage line
        self.print_usage(sys.stderr)
        raise UserError(f"{self.prog}: {message}")


def image_arguments(p: argparse.ArgumentParser, stacks: str, lab_help: str) -> None:
    """STACK IMAGE [--lab] [--state-dir] [--username]: the commands that act on one image of a stack."""
    p.add_argument("stack", help=f"stack name ({stacks})")
    p.add_argument("image", help="[REGISTRY/]REPO[:TAG|@DIGEST] in the stack's registry (no tag: latest)")
    p.add_argument("--lab", action="store_true", help=lab_help)
    p.add_argument("--state-dir", help="with --lab: the lab's state directory (default .lab/STACK)")
    p.add_argument(
        "--username",
        help="registry account (password from $REGISTRY_PASSWORD; with --lab a lab account, default "
        "the demo account); none: anonymous",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m fleet", description="registry-fleet operator commands")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    stacks = ", ".join(available_stacks()) or "none"
    p = sub.add_parser("validate", help="check a stack file against the settings model (no Pulumi engine)")
    p.add_argument("stack", help=f"stack name ({stacks})")
    p = sub.add_parser("plan", help="what `pulumi up` would create, from the real program under mocks")
    p.add_argument("stack", help=f"stack name ({stacks})")
    p.add_argument("--json", action="store_true", help="machine-readable: every resource with its inputs")

    p = sub.add_parser("bootstrap", help="create the S3 state bucket and KMS secrets key for a Pulumi backend")
    p.add_argument("--region", required=True, help="AWS region of the state bucket and key")
    p.add_argument("--name", required=True, help="state bucket name (also names the key alias)")

    stack = sub.add_parser("stack", help="team stacks")
    stack_sub = stack.add_subparsers(dest="stack_command", required=True, parser_class=_Parser)
    p = stack_sub.add_parser("new", help="write stacks/Pulumi.TEAM-ENV.yaml from a template, validated")
    p.add_argument("team", help="team slug, e.g. payments")
    p.add_argument("env", help="dev, staging or prod")
    p.add_argument("--from", dest="template", help="stack to start from (default: prod for prod, else dev)")

    from infra.settings import ENVIRONMENTS

    p = sub.add_parser("promote", help="deploy a commit to an environment through the promotion gates")
    p.add_argument("--to", dest="to_env", required=True, choices=ENVIRONMENTS)
    p.add_argument("--from", dest="from_env", choices=ENVIRONMENTS, help="source environment (default: the previous)")
    p.add_argument("--stack", help="team stack, e.g. payments-prod (default: the environment's own stack)")
    p.add_argument("--commit", required=True, help="full SHA of the checked-out commit")
    p.add_argument(
        "--allow-replace",
        action="append",
        default=[],
        metavar="TYPE",
        help="stateful resource type the preview may replace or delete (see fleet/promote.py STATEFUL_TYPES)",
    )

    p = sub.add_parser("audit", help="score the ten practices for a stack from the policy rules")
    p.add_argument("stack", nargs="?", help=f"stack name ({stacks})")
    p.add_argument("--all", action="store_true", help="every stack in stacks/")
    p.add_argument("--format", choices=("text", "json", "markdown"), default="text")

    for name, text in (
        ("sign", "sign an image's digest with the stack's KMS key (cosign format, stored in the registry)"),
        ("verify", "exit 0 when the image's digest carries a valid signature by the stack's key, else 1"),
    ):
        p = sub.add_parser(name, help=text)
        image_arguments(p, stacks, "the running lab of the stack (its registry and KMS)")
        if name == "sign":
            p.add_argument("--recursive", action="store_true", help="an index: sign each platform manifest too")
            p.add_argument("--annotation", action="append", default=[], metavar="KEY=VALUE",
                           help="a claim in the payload's optional part (repeatable)")  # fmt: skip
        else:
            p.add_argument("--public-key", help="the stack's public key PEM (default: KMS GetPublicKey)")
    p = sub.add_parser(
        "trust-policy",
        help="a consumer's policy requiring the stack's signatures (containers, Kyverno, policy-controller)",
    )
    p.add_argument("stack", help=f"stack name ({stacks})")
    p.add_argument("--format", required=True, choices=("containers", "kyverno", "policy-controller"))
    p.add_argument("--public-key", metavar="FILE", help="the public key PEM (default: the deployed stack's output)")
    p.add_argument("--lab", action="store_true", help="the running lab's key and registry (python -m fleet lab up)")
    p.add_argument("--state-dir", help="the lab's state directory, with --lab (default .lab/STACK)")
    p.add_argument(
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="require signatures here (repeatable; default: the stack's protected namespaces)",
    )
    p.add_argument("--output-dir", metavar="DIR", help="containers: write policy.json and registries.d/ there")

    lab = sub.add_parser("lab", help="the local lab: the fleet's registry, S3, load balancer and CDN on loopback")
    lab_sub = lab.add_subparsers(dest="lab_command", required=True, parser_class=_Parser)
    for name, text in (
        ("up", "start a lab (foreground until Ctrl-C, or --detach)"),
        ("status", "what runs, where, and whether it is healthy"),
        ("down", "stop every process of a lab"),
    ):
        lp = lab_sub.add_parser(name, help=text)
        lp.add_argument("stack", nargs="?", default="dev", help=f"stack name ({stacks}); default dev")
        lp.add_argument("--state-dir", help="where the lab keeps its files (default .lab/STACK)")
        if name == "up":
            lp.add_argument("--detach", action="store_true", help="leave the lab running and return")
        if name == "status":
            lp.add_argument("--json", action="store_true", help="for scripts")
    from fleet.operations import add_parsers

    add_parsers(sub, stacks)
    from fleet import scanning

    scanning.add_parsers(sub, stacks)
    return parser


def main(
    argv: Sequence[str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    stacks_dir: Path = STACKS_DIR,
    runner: StackOutputs | None = None,
) -> int:
    """`runner` reads deployed stacks' outputs (trust-policy); None: the Automation API."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        args = build_parser().parse_args(argv)
        if args.command == "validate":
            validate(args.stack, out, stacks_dir=stacks_dir)
        elif args.command == "plan":
            plan(args.stack, args.json, out, stacks_dir=stacks_dir)
        elif args.command == "bootstrap":
            if not bootstrap_backend(args.region, args.name, out):
                return EXIT_FAILED
        elif args.command == "stack" and args.stack_command == "new":
            stack_new(args.team, args.env, args.template, out, stacks_dir=stacks_dir)
        elif args.command == "promote":
            if not promote_stack(args, out, err, stacks_dir):
                return EXIT_FAILED
        elif args.command == "audit":
            if bool(args.stack) == bool(args.all):
                raise UserError("audit: name one stack, or --all")
            stacks = available_stacks(stacks_dir) if args.all else [args.stack]
            if not audit(stacks, args.format, out, stacks_dir=stacks_dir):
                return EXIT_FAILED
        elif args.command == "sign":
            sign_image(args, out, stacks_dir)
        elif args.command == "verify":
            if not verify_image(args, out, stacks_dir):
                return EXIT_FAILED
        elif args.command == "trust-policy":
            trust_policy(args, out, stacks_dir, runner)
        elif args.command == "lab" and args.lab_command == "up":
            lab_up(args.stack, args.detach, args.state_dir, out, stacks_dir=stacks_dir)
        elif args.command == "lab" and args.lab_command == "status":
            lab_status(args.stack, args.json, args.state_dir, out)
        elif args.command == "lab" and args.lab_command == "down":
            lab_down(args.stack, args.state_dir, out)
        elif args.command in OPERATIONS:
            from fleet.operations import run_operation

            return run_operation(args, out, err, stacks_dir)
        elif args.command in ("scan-report", "gate"):  # fleet/scanning.py
            from fleet import scanning

            try:
                return scanning.run(args, out, stacks_dir, runner)
            except scanning.ScanCommandError as e:
                raise UserError(str(e)) from None
    except SettingsError as e:
        print(f"error: {e}", file=err)
        return EXIT_USER_ERROR
    except UserError as e:
        print(f"error: {e}", file=err)
        return EXIT_USER_ERROR
    return 0
