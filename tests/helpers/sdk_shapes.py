"""Check recorded resource inputs against the provider SDKs' own argument types.

The mocks accept any input, so a misspelt argument (`evaluation_window_secs`, `healthCheck.matchr`)
would pass every graph test and fail only at `pulumi up`. The Python SDKs (pulumi-aws, -cloudflare,
-tls, -random) declare every argument of every resource as typed `__init__` parameters and every
nested block as a TypedDict: `input_errors` walks a resource's recorded inputs (camelCase, as the engine
records them) through those types and names every key that is not an argument there.
"""

from __future__ import annotations

import collections.abc
import importlib
import keyword
import re
import sys
import typing
from functools import cache
from typing import Any, get_args, get_origin, get_type_hints, is_typeddict

import pulumi
import pulumi.output

SDK_PACKAGES = {"aws": "pulumi_aws", "cloudflare": "pulumi_cloudflare", "tls": "pulumi_tls", "random": "pulumi_random"}
_SEQUENCES = (list, typing.Sequence, collections.abc.Sequence)
_MAPPINGS = (dict, typing.Mapping, collections.abc.Mapping)


def _hints(obj: Any, module: str) -> dict[str, Any]:
    # The SDKs annotate with strings that name pulumi's Input/Output and their own module's types.
    namespace = {**vars(pulumi.output), **vars(pulumi), **vars(sys.modules[module])}
    return get_type_hints(obj, globalns=namespace)


@cache
def resource_arguments(type_token: str) -> dict[str, Any] | None:
    """snake_case argument -> type of the resource `type_token` (None: not an SDK resource)."""
    package, module, name = type_token.split(":")
    if package not in SDK_PACKAGES:
        return None
    sub = module.split("/")[0]
    sub = f"{sub}_" if keyword.iskeyword(sub) else sub  # pulumi_aws.lambda_
    sdk = importlib.import_module(SDK_PACKAGES[package] + ("" if sub == "index" else f".{sub}"))
    resource_module = sys.modules[getattr(sdk, name).__module__]
    # A resource whose name collides with a nested block's args class gets `<Name>InitArgs`.
    args = getattr(resource_module, f"{name}InitArgs", None) or getattr(resource_module, f"{name}Args")
    return _hints(args.__init__, args.__module__)


def _snake(key: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()


def _find(tp: Any, want: Any) -> list[Any]:
    """The members of a (nested) Union/Input/Optional type that `want` accepts."""
    found, stack = [], [tp]
    while stack:
        t = stack.pop()
        if want(t):
            found.append(t)
        else:
            stack.extend(get_args(t))
    return found


def _is_block(tp: Any) -> bool:
    """A nested block's type: an `@pulumi.input_type` class (`...Args`) or its TypedDict (`...ArgsDict`)."""
    return is_typeddict(tp) or (isinstance(tp, type) and tp.__name__.endswith("Args"))


def _value_errors(value: Any, tp: Any, path: str) -> list[str]:
    if isinstance(value, dict):
        blocks = _find(tp, _is_block)
        if blocks:
            block = blocks[0]
            fields = _hints(block if is_typeddict(block) else block.__init__, block.__module__)
            return _fields_errors(value, fields, block.__name__, path)
        return []  # a free-form map (tags, a JSON policy)
    if isinstance(value, list | tuple):
        sequences = _find(tp, lambda t: get_origin(t) in _SEQUENCES)
        if sequences:
            (item,) = get_args(sequences[0])
            return [e for i, v in enumerate(value) for e in _value_errors(v, item, f"{path}[{i}]")]
    return []


def _fields_errors(value: dict[str, Any], fields: dict[str, Any], owner: str, path: str) -> list[str]:
    errors = []
    for key, item in value.items():
        field = _snake(key)
        if field not in fields:
            errors.append(f"{path}.{key}: not an argument of {owner} (it has: {', '.join(sorted(fields))})")
        else:
            errors += _value_errors(item, fields[field], f"{path}.{key}")
    return errors


def input_errors(type_token: str, name: str, inputs: dict[str, Any]) -> list[str]:
    """Every recorded input key of one resource that its SDK does not declare ([] when all are known)."""
    arguments = resource_arguments(type_token)
    if arguments is None:
        return []
    return _fields_errors(inputs, arguments, type_token, name)
