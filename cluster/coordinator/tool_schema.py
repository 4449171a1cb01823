"""What a tool parameter's JSON Schema says about its value, in the forms clients write: a
local `$ref` followed, and a nullable value ([T, "null"], or anyOf / oneOf with a null
option: OpenAI's strict mode, pydantic's Optional and zod's nullable) read as T or null."""

import json

MAX_REFS = 8
"""Refs followed in a row before a schema counts as any value (a cycle)."""


def resolve(schema, root) -> tuple[dict | None, bool]:
    """(the schema a value follows, None for any value; whether null is allowed besides).
    root: the tool's parameters schema, where `#/...` refs point."""
    nullable = False
    for _ in range(MAX_REFS):
        if not isinstance(schema, dict):
            return None, nullable
        ref = schema.get("$ref")
        if isinstance(ref, str):
            schema = pointer(root, ref)
            continue
        kind = schema.get("type")
        if isinstance(kind, list) and "null" in kind:
            rest = [t for t in kind if t != "null"]
            single = {**schema, "type": rest[0]} if len(rest) == 1 else None
            return single, True  # a union of several types stays any value
        options = schema.get("anyOf", schema.get("oneOf"))
        if isinstance(options, list) and options:
            real = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            nullable = nullable or len(real) < len(options)
            if len(real) != 1:
                return None, nullable
            schema = real[0]
            continue
        return schema, nullable
    return None, nullable


def pointer(root, ref: str):
    """The part of `root` a local ref (`#/$defs/Name`, `#/anyOf/0`) names; None when it names
    none."""
    if not ref.startswith("#"):
        return None
    node = root
    for part in filter(None, ref[1:].split("/")):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


SCALARS = ("string", "integer", "number", "boolean")


def item_type(schema, root):
    """For an array of scalars, the items' type (as `value_type` gives it); else None."""
    inner, _ = resolve(schema, root)
    if not inner or inner.get("type") != "array":
        return None
    kind = value_type(inner.get("items"), root)
    scalar = [k for k in (kind if isinstance(kind, list) else [kind]) if k != "null"]
    return kind if len(scalar) == 1 and scalar[0] in SCALARS else None


def as_item(value, kind):
    """An array item as its scalar schema types it, where the model wrote another JSON type
    (`[64]` for an array of strings is `["64"]`, `["3"]` for integers `[3]`); else as is."""
    want = kind if isinstance(kind, str) else next(k for k in kind if k != "null")
    if value is None and isinstance(kind, list):
        return None
    if want == "string" and not isinstance(value, str):
        return value if isinstance(value, dict | list) else json.dumps(value)
    if want in ("integer", "number", "boolean") and isinstance(value, str):
        try:
            parsed = json.loads(value.strip())
        except ValueError:
            return value
        ok = {"integer": int, "number": int | float, "boolean": bool}[want]
        if isinstance(parsed, ok) and (want == "boolean") == isinstance(parsed, bool):
            return parsed
    return value


def value_type(schema, root):
    """The parameter's JSON type as the parser types a value by: T, [T, "null"] when null
    is allowed too, a union's list as written, None when the schema says no type."""
    if isinstance(schema, dict) and isinstance(schema.get("type"), list):
        return schema["type"]
    inner, nullable = resolve(schema, root)
    kind = inner.get("type") if inner else None
    if not isinstance(kind, str):
        return None
    return [kind, "null"] if nullable else kind
