"""The json-filter example plugin in Python (world hookd:plugin/filter-plugin).

Delivers an event only when the JSON value at a configured dot path of the payload is one of
the allowed values, and drops it otherwise. Same config and behaviour as
plugins/examples/json-filter (Rust): {"path": "data.kind", "allowed": ["a", "b"]}.

Built by componentize-py (see ../build.sh), which generates the `wit_world` bindings package:
each exported interface is a class of the same name (`Filter`, `Meta`), records are
dataclasses, `list<u8>` is `bytes`, and a `result` error is raised as `Err(value)`.
"""

import json
from typing import Any

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports.filter import Verdict
from wit_world.exports.meta import Description
from wit_world.imports import host
from wit_world.imports.types import (
    Event,
    LogLevel,
    PluginError_InvalidConfig,
    PluginError_InvalidEvent,
)

_MISSING = object()


def _invalid_config(message: str) -> Err:
    return Err(PluginError_InvalidConfig(message))


def _parse_config(config: str) -> dict[str, Any]:
    """Parse and check the config; raises Err(invalid-config)."""
    try:
        parsed = json.loads(config)
    except ValueError as error:
        raise _invalid_config(f"config is not valid: {error}")
    if not isinstance(parsed, dict):
        raise _invalid_config("config is not valid: expected an object")
    unknown = set(parsed) - {"path", "allowed"}
    if unknown:
        raise _invalid_config(f"config is not valid: unknown field `{sorted(unknown)[0]}`")
    path = parsed.get("path")
    if not isinstance(path, str):
        raise _invalid_config("config is not valid: `path` must be a string")
    if path != "" and "" in path.split("."):
        raise _invalid_config(f"path `{path}` has an empty segment")
    allowed = parsed.get("allowed")
    if not isinstance(allowed, list):
        raise _invalid_config("config is not valid: `allowed` must be an array")
    if not allowed:
        raise _invalid_config("`allowed` must list at least one value")
    return parsed


def _lookup(value: Any, path: str) -> Any:
    """The value at dot path `path` in `value`, or _MISSING (see hookd_plugin_sdk::json)."""
    current = value
    for segment in (s for s in path.split(".") if s):
        if isinstance(current, list):
            if not segment.isdigit() or int(segment) >= len(current):
                return _MISSING
            current = current[int(segment)]
        elif isinstance(current, dict):
            if segment not in current:
                return _MISSING
            current = current[segment]
        else:
            return _MISSING
    return current


def _json_equal(a: Any, b: Any) -> bool:
    """JSON equality; unlike Python's `==`, `true` never equals `1`."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


class Meta(exports.Meta):
    def describe(self) -> Description:
        return Description(name="py-filter", version="0.1.0", hooks=["filter"])

    def validate_config(self, config: str) -> None:
        try:
            _parse_config(config)
        except Err as error:
            raise Err(error.value.value)


class Filter(exports.Filter):
    def filter(self, config: str, event: Event) -> Verdict:
        parsed = _parse_config(config)
        try:
            payload = json.loads(event.payload)
        except ValueError as error:
            raise Err(PluginError_InvalidEvent(f"payload is not JSON: {error}"))
        path = parsed["path"]
        value = _lookup(payload, path)
        if value is _MISSING:
            host.log(LogLevel.DEBUG, f"{path} is absent")
            return Verdict.DROP
        if any(_json_equal(allowed, value) for allowed in parsed["allowed"]):
            return Verdict.DELIVER
        host.log(LogLevel.DEBUG, f"{path} = {json.dumps(value)} is not allowed")
        return Verdict.DROP
