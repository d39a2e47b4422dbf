"""Pulumi entry point: load the stack's typed settings, build, export. Nothing else lives here."""

import sys
from pathlib import Path

# `main: infra/` runs this file as a script: make the repository root importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pulumi

from infra.program import build
from infra.settings import SettingsError, load_from_pulumi

try:
    settings = load_from_pulumi()
except SettingsError as err:
    # A user mistake: say what is wrong, register nothing, no traceback.
    pulumi.log.error(str(err))
    raise SystemExit(2) from None

for key, value in build(settings).items():
    pulumi.export(key, value)
