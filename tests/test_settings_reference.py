"""The settings reference is generated from the model: docs/settings.md and the Pulumi.yaml descriptions
are current, every key has a description, and every Pulumi.yaml default shows in the reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from infra.settings import PROJECT_FILE, project_config, project_defaults
from infra.settings.model import Settings
from infra.settings.reference import (
    DOCS_FILE,
    main,
    model_rows,
    project_descriptions,
    render_project_file,
    render_reference,
    stale,
    undescribed,
)


def test_docs_settings_md_is_generated_from_the_model() -> None:
    assert DOCS_FILE.read_text() == render_reference(), "docs/settings.md is stale: run `make docs`"


def test_pulumi_yaml_descriptions_are_the_models() -> None:
    text = PROJECT_FILE.read_text()
    assert render_project_file(text) == text, "the descriptions in Pulumi.yaml are stale: run `make docs`"
    declared = {key: decl["description"] for key, decl in project_config().items()}
    assert declared == {key: project_descriptions()[key] for key in declared}


def test_every_key_of_the_model_has_a_description() -> None:
    assert undescribed() == []


def test_every_pulumi_yaml_default_is_shown_in_the_reference() -> None:
    rows = {row.key: row for row in model_rows(Settings, project=project_defaults())}

    def leaves(value: Any, path: str) -> list[tuple[str, Any]]:
        if isinstance(value, dict):
            return [leaf for key, v in value.items() for leaf in leaves(v, f"{path}.{key}" if path else key)]
        return [(path, value)]

    for key, value in leaves(project_defaults(), ""):
        assert key in rows, f"{key}: a Pulumi.yaml default the reference does not list"
        assert rows[key].default not in ("required", "unset"), f"{key}: the reference hides its default {value!r}"


def test_a_stale_reference_or_description_is_found(tmp_path: Path) -> None:
    project, docs = tmp_path / "Pulumi.yaml", tmp_path / "settings.md"
    project.write_text(PROJECT_FILE.read_text())
    docs.write_text(DOCS_FILE.read_text())
    assert stale(project, docs) == []
    assert main(["--check"]) == 0
    docs.write_text(DOCS_FILE.read_text().replace("Availability zones", "Zones"))
    project.write_text(PROJECT_FILE.read_text().replace('description: "VPC,', 'description: "The VPC,'))
    assert stale(project, docs) == [docs, project]
