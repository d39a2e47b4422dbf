"""Pulumi entry point: load the stack's typed settings and secret inputs, build, export. Nothing else lives here."""

import sys
from pathlib import Path

# `main: infra/` runs this file as a script: make the repository root importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pulumi

from components.errors import ComponentInputError
from infra.program import build
from infra.secrets import load_access_secrets_from_pulumi
from infra.settings import SettingsError, load_from_pulumi

try:
    settings = load_from_pulumi()
    # Checked before anything is registered; errors name the key, never the value.
    secrets = load_access_secrets_from_pulumi(settings)
except SettingsError as err:
    # A user mistake: say what is wrong, register nothing, no traceback.
    pulumi.log.error(str(err))
    raise SystemExit(2) from None

try:
    outputs = build(settings, secrets)
except ComponentInputError as err:
    # A user mistake a component found (e.g. a token service config the service would refuse;
    # build checks that one before registering anything).
    pulumi.log.error(str(err))
    raise SystemExit(2) from None

for key, value in outputs.items():
    pulumi.export(key, value)
