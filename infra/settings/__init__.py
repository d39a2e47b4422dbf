"""Typed settings for one registry-fleet stack: import everything from here (`from infra.settings import X`).

- `model.py`: every key a stack can set (:class:`Settings`), its type, single-key rules and description;
  `access` is the tagged union :class:`TokenAccess` | :class:`HtpasswdAccess` on `mode`.
- `checks.py`: rules that relate several keys.
- `errors.py`: :class:`SettingsError`, a list of :class:`Problem` (``key.path: value: what is allowed``).
- `loading.py`: the `Pulumi.yaml` defaults, stack files, the engine's config; validation.
- `reference.py`: generates `docs/settings.md` and the `Pulumi.yaml` descriptions (`make docs`).
"""

from infra.settings.checks import cross_field_problems
from infra.settings.errors import Problem, SettingsError
from infra.settings.loading import (
    PROJECT,
    PROJECT_FILE,
    REPO_ROOT,
    STACKS_DIR,
    available_stacks,
    deep_merge,
    load_from_pulumi,
    load_stack_settings,
    merge_over_defaults,
    merged_stack_config,
    project_config,
    project_defaults,
    settings_from_config,
    stack_file,
    stack_overrides,
)
from infra.settings.model import (
    ENVIRONMENTS,
    REGION_NAME,
    STACK_NAME,
    TEAM_SLUG,
    TLS_POLICIES,
    AccessSettings,
    BackupSettings,
    CdnSettings,
    CloudflareSettings,
    DirectorySettings,
    Environment,
    FleetSettings,
    HtpasswdAccess,
    NetworkSettings,
    ObjectLockSettings,
    RobotSettings,
    Settings,
    StorageSettings,
    TlsSettings,
    TokenAccess,
    TokenSigningSettings,
    Waiver,
)

__all__ = [
    "ENVIRONMENTS",
    "PROJECT",
    "PROJECT_FILE",
    "REGION_NAME",
    "REPO_ROOT",
    "STACKS_DIR",
    "STACK_NAME",
    "TEAM_SLUG",
    "TLS_POLICIES",
    "AccessSettings",
    "BackupSettings",
    "CdnSettings",
    "CloudflareSettings",
    "DirectorySettings",
    "Environment",
    "FleetSettings",
    "HtpasswdAccess",
    "NetworkSettings",
    "ObjectLockSettings",
    "Problem",
    "RobotSettings",
    "Settings",
    "SettingsError",
    "StorageSettings",
    "TlsSettings",
    "TokenAccess",
    "TokenSigningSettings",
    "Waiver",
    "available_stacks",
    "cross_field_problems",
    "deep_merge",
    "load_from_pulumi",
    "load_stack_settings",
    "merge_over_defaults",
    "merged_stack_config",
    "project_config",
    "project_defaults",
    "settings_from_config",
    "stack_file",
    "stack_overrides",
]
