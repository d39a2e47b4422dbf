"""The one template function: a file of `host/files/` with its `${NAME}` placeholders filled.

A placeholder is `${` + upper-case letters, digits and `_` + `}`; the shell scripts and unit files in
`host/files/` use no other `${UPPER_CASE}` form (shell variables there are written `$NAME` or in lower
case), so a placeholder can never be a shell expansion. Every placeholder must be given a value and
every value must have a placeholder: a typo fails at render time, not on a host. Values are inserted
as they are (the caller quotes them for the shell) and are not scanned for placeholders themselves.

The files ship as package data beside this module, so they are found wherever `host` is imported
from (the repository root under Pulumi, the lab, the tests).
"""

from __future__ import annotations

import re
from importlib import resources

PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


def template_text(name: str) -> str:
    """The text of `host/files/<name>`, placeholders and all."""
    return resources.files("host").joinpath("files", name).read_text(encoding="utf-8")


def render_file(name: str, **values: str) -> str:
    """`host/files/<name>` with each `${NAME}` replaced by `values[NAME]`. Raises ValueError naming the
    placeholders that have no value and the values that have no placeholder."""
    text = template_text(name)
    names = set(PLACEHOLDER.findall(text))
    missing, unknown = sorted(names - values.keys()), sorted(values.keys() - names)
    if missing or unknown:
        raise ValueError(
            f"host/files/{name}: placeholders without a value: {missing or 'none'}; "
            f"values without a placeholder: {unknown or 'none'}."
        )
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], text)
