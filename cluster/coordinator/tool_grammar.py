"""The offered tools as a ToolGrammar in the model's token ids: the engine keeps each call the
model writes to these names, keys and values (cluster/engine/grammar.py applies it)."""

import functools
import json
import logging

import llguidance

from ..types import ToolGrammar, ToolParam, ToolSpec
from .tokenizer import PromptTokenizer
from .tool_schema import pointer, resolve

log = logging.getLogger(__name__)

NUMBER_CHARS = "0123456789-+.eE"
CALL_TAGS = ("<tool_call>", "</tool_call>", "<arg_key>", "</arg_key>", "<arg_value>",
             "</arg_value>")  # fmt: skip


def value_text(value) -> str:
    """A value as the chat template writes it: strings raw, the rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


NUMBER_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
STRING_BOUNDS = ("minLength", "maxLength", "pattern")
LONGEST_BOUND = 4096  # characters a string's length bound may count to and still be held


def _rule(schema, root) -> tuple[list[str], str, str]:
    """(the values a parameter may take when its schema closes the set, "integer" or
    "number" when it asks for one, the grammar of an array or object, or of a number or
    string the schema bounds): `null` besides where the schema allows it; a union of other
    types stays free text."""
    inner, nullable = resolve(schema, root)
    if inner is None:  # not a schema, or a union: any value
        return [], "", ""
    if inner.get("type") in ("array", "object") and not inner.get("enum") and "const" not in inner:
        return [], "", json_grammar(inner, root, nullable)
    choices: list[str] = []
    if isinstance(inner.get("enum"), list) and inner["enum"]:
        choices = [value_text(v) for v in inner["enum"]]
    elif "const" in inner:
        choices = [value_text(inner["const"])]
    elif inner.get("type") == "boolean":
        choices = ["true", "false"]
    kind = inner.get("type") if not choices and inner.get("type") in ("integer", "number") else ""
    if kind and any(k in inner for k in NUMBER_BOUNDS):  # JSON of the schema: its range
        return [], "", json_grammar(inner, root, nullable)
    if not choices and inner.get("type") == "string" and any(k in inner for k in STRING_BOUNDS):
        return [], "", string_grammar(inner, nullable)
    if nullable and (choices or kind) and "null" not in choices:
        choices.append("null")
    return choices, kind, ""


DEFS = ("$defs", "definitions")
JSON_FORM = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": ",
             "lenient": True, "coerce_one_of": True}  # fmt: skip
"""JSON as GLM's template writes it (json.dumps' separators): what the model learned. Keywords
llguidance does not implement (`uniqueItems`, `if` / `then`, ...) are left out rather than
leaving the whole value free; `oneOf` is held as `anyOf`."""
"""Where a tool's schema keeps the shared schemas its `$ref`s name."""


def _checked(compile_, source: str, what: str) -> str:
    """compile_(source) as an llguidance grammar it validates; '' when it cannot (logged as
    `what` not held, the value then free text)."""
    try:
        grammar = compile_(source)
    except ValueError as e:
        why = str(e)
    else:
        if not (why := llguidance.LLMatcher.validate_grammar(grammar)):
            return grammar
    log.warning("%s (llguidance: %s); it is written as free text", what,
                why.splitlines()[0][:300])  # fmt: skip
    return ""


@functools.lru_cache(maxsize=512)
def _compiled(schema_json: str) -> str:
    """An llguidance grammar of a JSON schema ('' when llguidance cannot hold values to it:
    the value is then free text, as before)."""
    return _checked(
        lambda text: llguidance.LLMatcher.grammar_from_json_schema(text, defaults=JSON_FORM),
        schema_json, "a tool's array or object value is not held to its schema",
    )  # fmt: skip


def json_grammar(inner: dict, root, nullable: bool) -> str:
    """The grammar an array or object value is held to: its schema, null besides where the
    schema allows it, and what its `$ref`s name (the tool's schema is their root: each
    referenced part goes into this value's `$defs`)."""
    named: dict[str, str] = {}
    defs: dict[str, object] = {}
    schema = _rooted(inner, root if isinstance(root, dict) else {}, named, defs)
    if nullable:
        schema = {"anyOf": [schema, {"type": "null"}]}
    if defs:
        schema = {**schema, "$defs": defs}
    try:  # (the schema's own key order: llguidance keeps properties in it)
        text = json.dumps(schema)
    except (TypeError, ValueError):
        return ""
    return _compiled(text)


def string_grammar(inner: dict, nullable: bool) -> str:
    """The grammar a bounded string value is held to, as GLM writes it (raw text): its
    `pattern` (JSON Schema's: found anywhere in the value unless anchored), else its
    `minLength` / `maxLength`; `null` besides when nullable."""
    pattern = inner.get("pattern")
    if isinstance(pattern, str) and pattern:
        anchored = pattern.startswith("^") and pattern.endswith("$") and not pattern.endswith(
            "\\$")  # fmt: skip
        rx = f"(?:{pattern[1:-1]})" if anchored else f"(?s:.*)(?:{pattern})(?s:.*)"
    else:
        low = inner.get("minLength", 0)
        high = inner.get("maxLength")
        if not isinstance(low, int) or not (high is None or isinstance(high, int)):
            return ""
        if max(low, high or 0) > LONGEST_BOUND:  # (a bound that long rarely binds; free text)
            return ""
        rx = f"(?s:.{{{low},{'' if high is None else high}}})"
    if nullable:
        rx = f"null|{rx}"
    return _compiled_regex(rx)


@functools.lru_cache(maxsize=512)
def _compiled_regex(rx: str) -> str:
    return _checked(llguidance.LLMatcher.grammar_from_regex, rx,
                    "a tool's bounded string value is not held to its bounds")  # fmt: skip


def _rooted(schema, root: dict, named: dict[str, str], defs: dict):
    """The schema with each `$ref` (a pointer into the tool's schema, zod's `#/properties/a`
    and `#` too) pointing at a copy of its target under `#/$defs/`, each target once."""
    if isinstance(schema, list):
        return [_rooted(v, root, named, defs) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _rooted(v, root, named, defs) for k, v in schema.items()
           if k not in ("$ref", *DEFS)}  # fmt: skip
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#"):
        if ref not in named:
            named[ref] = name = f"r{len(named)}"
            target = pointer(root, ref)
            defs[name] = {}  # (taken before its body: a recursive ref finds its name)
            defs[name] = _rooted(target, root, named, defs) if target is not None else {}
        out["$ref"] = f"#/$defs/{named[ref]}"
    elif isinstance(ref, str):
        out["$ref"] = ref
    return out


def format_grammar(fmt: dict) -> str:
    """A custom tool's format (`{"type": "grammar", "syntax": "lark" | "regex", "definition":
    ...}`) as an llguidance grammar ('' for text, or one llguidance cannot take: logged, and
    the text is then free)."""
    if fmt.get("type") != "grammar":
        return ""
    return _compiled_format(str(fmt.get("syntax")), str(fmt.get("definition", "")))


@functools.lru_cache(maxsize=64)
def _compiled_format(syntax: str, definition: str) -> str:
    def unknown(_):
        raise ValueError(f"syntax '{syntax}' is not lark or regex")

    compile_ = {"lark": llguidance.LLMatcher.grammar_from_lark,
                "regex": llguidance.LLMatcher.grammar_from_regex}.get(syntax, unknown)  # fmt: skip
    return _checked(compile_, definition, "a custom tool's input is not held to its grammar")


def _tokens(tokenizer: PromptTokenizer, text: str) -> tuple[int, ...]:
    return tuple(tokenizer.encode(text))


ENDS = ("<|observation|>", "<|user|>", "<|endoftext|>")
"""GLM's tokens that end a turn of calls (its generation config stops on them)."""


def tool_grammar(
    tokenizer: PromptTokenizer,
    tools: list[dict],
    opening: list[int],
    calls_only: bool = False,
    formats: dict[str, dict] | None = None,
) -> ToolGrammar | None:
    """The grammar of calls to `tools` (None: no tool). A tool without parameters takes none
    (OpenAI: an empty parameter list); one whose keys are open (a schema of an object without
    `properties`, or with `additionalProperties`) takes its listed keys and any other.
    calls_only: the reply is calls (tool_choice required or named): a call is followed by
    another or the turn's end, not by text. formats: custom tools' formats by name (the
    Responses API's freeform tools, a function of one string `input`): their grammar holds
    that text."""
    markers = tokenizer.markers
    specs, names = [], set()
    for tool in tools:
        f = tool.get("function", tool)
        name = f.get("name") or ""
        schema = f.get("parameters") or f.get("input_schema") or {"properties": {}}
        if not isinstance(schema, dict) or not isinstance(schema.get("properties", {}), dict):
            return None  # not a schema of an object (the API refuses these before)
        if not name or name in names:
            continue
        names.add(name)
        props = schema.get("properties")
        required = set(schema.get("required") or ())
        rules = {key: _rule(p, schema) for key, p in (props or {}).items()}
        if formats and name in formats and "input" in rules:
            rules["input"] = ([], "", format_grammar(formats[name]))
        params = tuple(
            ToolParam(
                _tokens(tokenizer, key),
                tuple(_tokens(tokenizer, c) for c in choices),
                key in required,
                kind,
                grammar,
            )
            for key, (choices, kind, grammar) in rules.items()
        )
        open_keys = props is None or schema.get("additionalProperties") not in (None, False)
        specs.append(ToolSpec(_tokens(tokenizer, name), params, open_keys))
    if not specs:
        return None
    return ToolGrammar(
        tuple(markers.id_of(t) for t in CALL_TAGS),
        tuple(specs),
        _spacers(tokenizer),
        tokenizer.special_ids,
        tuple(opening),
        *_numbers(tokenizer),
        tuple(i for t in ENDS if (i := tokenizer.special_id(t)) is not None) if calls_only else (),
    )


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
