"""The offered tools as a ToolGrammar in the model's token ids: the engine keeps each call the
model writes to these names, keys and values (cluster/engine/grammar.py applies it)."""

import functools
import json
import logging

from ..types import ToolGrammar, ToolParam, ToolSpec
from .tokenizer import PromptTokenizer

log = logging.getLogger("cluster.tool_grammar")
_told: set[str] = set()
"""Tools whose open schema was logged already (agents send the same tools every turn)."""

NUMBER_CHARS = "0123456789-+.eE"
CALL_TAGS = ("<tool_call>", "</tool_call>", "<arg_key>", "</arg_key>", "<arg_value>",
             "</arg_value>")  # fmt: skip


def value_text(value) -> str:
    """A value as the chat template writes it: strings raw, the rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def _choices(schema) -> list[str]:
    """The values a parameter may take, when its schema closes the set."""
    if not isinstance(schema, dict):  # not a schema: any value
        return []
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return [value_text(v) for v in schema["enum"]]
    if "const" in schema:
        return [value_text(schema["const"])]
    if schema.get("type") == "boolean":
        return ["true", "false"]
    return []


def _kind(schema) -> str:
    """ "integer" or "number" when the schema says exactly that (a union stays free text)."""
    kind = schema.get("type") if isinstance(schema, dict) else None
    return kind if kind in ("integer", "number") and not _choices(schema) else ""


def _tokens(tokenizer: PromptTokenizer, text: str) -> tuple[int, ...]:
    return tuple(tokenizer.encode(text))


def tool_grammar(
    tokenizer: PromptTokenizer, tools: list[dict], opening: list[int]
) -> ToolGrammar | None:
    """The grammar of calls to `tools`; None when a tool's keys are open (a schema without
    `properties` or with `additionalProperties`), which no key list can hold."""
    markers = tokenizer.markers
    specs, names = [], set()
    for tool in tools:
        f = tool.get("function", tool)
        name = f.get("name") or ""
        schema = f.get("parameters") or f.get("input_schema") or {}
        if not isinstance(schema, dict) or not isinstance(schema.get("properties", {}), dict):
            return _off(name, "its parameters are not a JSON schema of an object")
        props = schema.get("properties")
        if not name or name in names:
            continue
        keys_open = props is None and schema.get("type", "object") == "object"
        if keys_open or schema.get("additionalProperties") not in (None, False):
            return _off(name, "its schema leaves keys open (additionalProperties or no properties)")
        names.add(name)
        required = set(schema.get("required") or ())
        params = tuple(
            ToolParam(
                _tokens(tokenizer, key),
                tuple(_tokens(tokenizer, c) for c in _choices(p)),
                key in required,
                _kind(p),
            )
            for key, p in (props or {}).items()
        )
        specs.append(ToolSpec(_tokens(tokenizer, name), params))
    if not specs:
        return None
    return ToolGrammar(
        tuple(markers.id_of(t) for t in CALL_TAGS),
        tuple(specs),
        _spacers(tokenizer),
        tokenizer.special_ids,
        tuple(opening),
        *_numbers(tokenizer),
    )


def _off(name: str, why: str) -> None:
    """No grammar for this request; the operator hears it once per tool."""
    if name not in _told:
        _told.add(name)
        log.warning("tool-call grammar off for requests offering tool %r: %s", name, why)
    return None


@functools.cache
def _numbers(tokenizer: PromptTokenizer) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """The tokens a number value may be made of, and their text (once per tokenizer)."""
    ids = tokenizer.tokens_of(NUMBER_CHARS)
    return ids, tuple(tokenizer.token_bytes(i).decode() for i in ids)


def warm(tokenizer: PromptTokenizer) -> None:
    """Find the number tokens once, at start (a scan of the vocabulary), not on a request."""
    _numbers(tokenizer)


def _spacers(tokenizer: PromptTokenizer) -> tuple[int, ...]:
    """Newline tokens, allowed between a call's parts."""
    return tuple(sorted({t[0] for text in ("\n", "\n\n")
                         if len(t := _tokens(tokenizer, text)) == 1}))  # fmt: skip
