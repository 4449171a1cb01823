"""Offered tools checked before a prompt is built: GLM writes a call's name, keys and values
between its own tags, so a name, key or listed value holding tag text, or a schema that is not
one of an object, would make calls that cannot be parsed back. Refused with what to fix."""

import re

from ..coordinator.errors import BadRequest

MARKUP = re.compile(r"</?(tool_call|arg_key|arg_value|think|tool_response)>|<\||\|>")
"""GLM's tags, and its turn tokens' brackets."""
NAME = re.compile(r"[^\s<>]{1,128}")


def check_tools(tools: list[dict]) -> None:
    """Raise BadRequest naming the first tool that GLM's call format cannot carry."""
    seen: dict[str, int] = {}
    for i, tool in enumerate(tools):
        f = tool.get("function", tool)
        where = f"tools.{i}"
        name = f.get("name") or ""
        if not NAME.fullmatch(name):
            raise BadRequest(
                f"'{where}' name {name!r}: a tool's name is 1 to 128 characters without "
                "whitespace, '<' or '>' (it is written between GLM's call tags)",
                param=f"{where}.name",
            )
        if name in seen:  # a call names its tool: which of the two would it be?
            raise BadRequest(f"'{where}' name {name!r} is also tools.{seen[name]}'s: tool "
                             "names must be unique", param=f"{where}.name")  # fmt: skip
        seen[name] = i
        field = "parameters" if "function" in tool or "parameters" in f else "input_schema"
        schema = f.get("parameters", f.get("input_schema"))
        if schema is not None:
            prefix = f"{where}.function" if "function" in tool else where
            try:
                _check_schema(schema, f"{where} ({name})")
            except BadRequest as e:
                e.param, e.code = e.param or f"{prefix}.{field}", e.code or "invalid_value"
                raise


def _check_schema(schema, where: str) -> None:
    if not isinstance(schema, dict):
        raise BadRequest(f"Invalid schema for {where}: parameters must be a JSON object")
    if schema.get("type", "object") != "object":
        raise BadRequest(f"Invalid schema for {where}: its type must be 'object', not "
                         f"{schema.get('type')!r} (a call's arguments are keys and "
                         "values)")  # fmt: skip
    props = schema.get("properties", {})
    if not isinstance(props, dict):
        raise BadRequest(f"Invalid schema for {where}: 'properties' must be an object of "
                         f"parameter schemas, not {type(props).__name__}")  # fmt: skip
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(k, str) for k in required):
        raise BadRequest(f"Invalid schema for {where}: 'required' must be a list of key names")
    for key, sub in props.items():
        if not key or key != key.strip() or MARKUP.search(key) or not key.isprintable():
            raise BadRequest(
                f"Invalid schema for {where}: key {key!r} must be non-empty printable text "
                "without surrounding whitespace or GLM's tags (it is written between "
                "<arg_key> and </arg_key>)"
            )
        if not isinstance(sub, dict | bool):
            raise BadRequest(f"Invalid schema for {where}: property {key!r} must be a schema "
                             f"object, not {type(sub).__name__}")  # fmt: skip
        if isinstance(sub, dict) and sub.get("enum") == []:
            raise BadRequest(f"Invalid schema for {where}: the enum of {key!r} lists no value "
                             "(no call could be written)")  # fmt: skip
        for value in (sub.get("enum") or []) if isinstance(sub, dict) else []:
            if isinstance(value, str) and MARKUP.search(value):
                raise BadRequest(f"Invalid schema for {where}: enum value {value!r} of "
                                 f"{key!r} holds GLM's tags")  # fmt: skip
