"""The tool-call grammar: what a row may write next inside a call, token by token; and the
grammar the coordinator compiles from a request's tools accepts GLM's own rendering of calls."""

import json
from pathlib import Path

import pytest

from cluster.coordinator.tokenizer import PromptTokenizer
from cluster.coordinator.tool_grammar import tool_grammar
from cluster.engine.grammar import FREE, CallState, Limiter
from cluster.types import ToolGrammar, ToolParam, ToolSpec

OPEN, CLOSE, KO, KC, VO, VC, NL, EOS = 1, 2, 3, 4, 5, 6, 7, 8
TAGS = (OPEN, CLOSE, KO, KC, VO, VC)
# Two tools whose names share a first token: "get" (10) + "time" (11) / "time" "zone" (12).
TIME = ToolSpec((10, 11), ())
ZONE = ToolSpec(
    (10, 11, 12),
    (ToolParam((20,), required=True), ToolParam((21, 22), ((30,), (31, 32)))),
)
GRAMMAR = ToolGrammar(TAGS, (TIME, ZONE), spacers=(NL,), value_banned=(*TAGS, EOS))


def walk(state: CallState, tokens: list[int]) -> list:
    """The limit before each token, feeding them one by one (asserting each is allowed)."""
    limits, out = [], []
    for t in tokens:
        lim = state.follow(out)
        limits.append(lim)
        assert lim.permits(t), (t, lim)
        out.append(t)
    state.follow(out)
    return limits


STRAY = {CLOSE, KO, KC, VO, VC}  # a call's inner tags


def test_outside_a_call_only_its_inner_tags_are_kept_out_and_the_open_tag_starts_the_name():
    s = Limiter(CallState(GRAMMAR), None)
    lim = s.follow([40, 41])
    assert lim.allow is None and lim.ban == STRAY and lim.mask is None
    assert lim.permits(OPEN) and lim.permits(EOS) and not lim.permits(VC)
    assert s.follow([40, 41, OPEN]).allow == {10}
    out = [40, OPEN, 10, 11, CLOSE, 42]  # after a call, the same again
    assert Limiter(CallState(GRAMMAR), None).follow(out).ban == STRAY
    banned = Limiter(CallState(GRAMMAR), None, frozenset({OPEN}))  # tool_choice none's ban too
    assert banned.follow([40]).ban == STRAY | {OPEN}


def test_a_name_that_is_a_prefix_of_another_may_end_or_go_on():
    s = Limiter(CallState(GRAMMAR), None)
    lim = walk(s, [OPEN, 10, 11])
    assert lim[-1].allow == {11}
    # "gettime" is whole (no params: only the end) and also starts "gettimezone".
    assert s.limit().allow == {12, CLOSE, NL}


def test_required_keys_come_before_the_end_and_a_used_key_is_not_offered_again():
    s = Limiter(CallState(GRAMMAR), None)
    walk(s, [OPEN, 10, 11, 12])
    assert s.limit().allow == {KO, NL}  # key 20 is required: no </tool_call> yet
    walk_more = [KO]
    s.follow([OPEN, 10, 11, 12, *walk_more])
    assert s.limit().allow == {20, 21}
    out = [OPEN, 10, 11, 12, KO, 20, KC, VO, 50, 51, VC]
    walk(Limiter(CallState(GRAMMAR), None), out)
    s = Limiter(CallState(GRAMMAR), None)
    s.follow(out)
    assert s.limit().allow == {KO, CLOSE, NL}
    s.follow([*out, KO])
    assert s.limit().allow == {21}  # 20 is used


def test_required_keys_come_in_the_schemas_order_and_optional_ones_anywhere():
    """Tool 13: keys 23 (required), 24 (optional), 25 (required), in that order."""
    tool = ToolSpec((13,), (ToolParam((23,), required=True), ToolParam((24,)),
                            ToolParam((25,), required=True)))  # fmt: skip
    g = ToolGrammar(TAGS, (tool,), spacers=(NL,), value_banned=(*TAGS, EOS))
    s = Limiter(CallState(g), None)
    assert s.follow([OPEN, 13, KO]).allow == {23, 24}  # 25 waits for 23
    out = [OPEN, 13, KO, 24, KC, VO, 50, VC]
    assert s.follow(out).allow == {KO, NL}
    assert s.follow([*out, KO]).allow == {23}
    out += [KO, 23, KC, VO, 50, VC, KO]
    assert s.follow(out).allow == {25}
    s = Limiter(CallState(g), None)
    out = [OPEN, 13, KO, 23, KC, VO, 50, VC, KO, 25, KC, VO, 51, VC]
    walk(s, out)
    assert s.limit().allow == {KO, CLOSE, NL}  # 24 may still come, or the end
    assert s.follow([*out, KO]).allow == {24}


def test_keys_end_only_when_whole_and_listed_values_are_the_only_values():
    s = Limiter(CallState(GRAMMAR), None)
    out = [OPEN, 10, 11, 12, KO, 21]
    s.follow(out)
    assert s.limit().allow == {22}
    out += [22]
    assert s.follow(out).allow == {KC}
    out += [KC]
    assert s.follow(out).allow == {VO, NL}
    out += [VO]
    assert s.follow(out).allow == {30, 31}
    out += [31]
    assert s.follow(out).allow == {32}
    out += [32]
    assert s.follow(out).allow == {VC}


def test_free_values_take_any_text_but_tags_and_end_tokens():
    s = Limiter(CallState(GRAMMAR), None)
    out = [OPEN, 10, 11, 12, KO, 20, KC, VO]
    lim = s.follow(out)
    assert lim.allow is None and lim.ban == {OPEN, CLOSE, KO, KC, VO, EOS}
    assert VC not in lim.ban
    out += [99, 98, VC, CLOSE]
    assert s.follow(out).ban == STRAY
    assert s.follow([*out, 40, OPEN]).allow == {10}  # a second call


def test_newlines_between_parts_as_glm_45_writes_them():
    walk(
        Limiter(CallState(GRAMMAR), None),
        [OPEN, 10, 11, 12, NL, KO, 20, KC, NL, VO, 50, VC, NL, CLOSE],
    )


def test_a_forced_opening_is_read_before_the_first_token():
    g = ToolGrammar(TAGS, (TIME, ZONE), value_banned=TAGS, opening=(OPEN, 10, 11, 12, KO))
    assert Limiter(CallState(g), None).follow([]).allow == {20, 21}


def test_a_token_off_the_grammar_lets_the_call_go():
    s = Limiter(CallState(GRAMMAR), None)
    assert s.follow([OPEN, 99]).ban == STRAY  # never produced under the mask (a draft run)


FIXTURE = Path(__file__).resolve().parents[2] / "cluster" / "fixture" / "trained"
TOOLS = [
    {"type": "function", "function": {"name": "fetch_document", "parameters": {
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "format": {"type": "string", "enum": ["pdf", "html", "plain text"]},
            "pages": {"type": "integer"},
            "draft": {"type": "boolean"},
        },
        "required": ["title"],
    }}},
    {"type": "function", "function": {"name": "fetch_doc", "parameters": {
        "type": "object", "properties": {"id": {"type": "number"}}}}},
]  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer():
    return PromptTokenizer(FIXTURE)


@pytest.mark.parametrize(
    "args",
    [
        {"title": "atlas of the sea", "format": "plain text", "pages": 12, "draft": False},
        {"pages": 3, "title": "<b>bold</b>\nline two"},
    ],
)
def test_the_compiled_grammar_accepts_calls_as_the_template_renders_them(tokenizer, args):
    grammar = tool_grammar(tokenizer, TOOLS, [])
    call = {"name": "fetch_document", "arguments": args}
    messages = [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": call}]},
    ]
    text = tokenizer.hf.apply_chat_template(messages, tools=TOOLS, tokenize=False)
    start = text.rindex("<tool_call>")
    rendered = text[start : text.index("</tool_call>", start) + len("</tool_call>")]
    tokens = tokenizer.encode(rendered)
    walk(Limiter(CallState(grammar), None), tokens)


def test_a_call_without_a_required_key_or_with_an_unlisted_value_is_refused(tokenizer):
    grammar = tool_grammar(tokenizer, TOOLS, [])
    enc = tokenizer.encode
    s = Limiter(CallState(grammar), None)
    out = enc("<tool_call>fetch_document")
    lim = s.follow(out)
    assert enc("</tool_call>")[0] not in lim.allow  # title is required
    out += enc("<arg_key>format</arg_key><arg_value>")
    lim = s.follow(out)
    assert set(lim.allow) == {enc(v)[0] for v in ("pdf", "html", "plain text")}
    assert enc("atlas")[0] not in lim.allow


def test_open_schemas_keep_the_name_and_free_the_keys(tokenizer):
    """A schema that leaves keys open (additionalProperties, or no properties) still keeps
    the call to an offered name; its keys are then any text without tags, none twice, and a
    listed key keeps its values. A tool without parameters takes none."""
    open_tool = [{"type": "function", "function": {"name": "anything", "parameters": {
        "type": "object", "additionalProperties": True,
        "properties": {"mode": {"enum": ["fast", "slow"]}}}}},
        {"type": "function", "function": {"name": "list_files"}}]  # fmt: skip
    g = tool_grammar(tokenizer, open_tool, [])
    assert [t.open_keys for t in g.tools] == [True, False] and g.tools[1].params == ()
    enc = tokenizer.encode
    s = Limiter(CallState(g), None)
    assert s.follow(enc("<tool_call>")).allow == {enc("anything")[0], enc("list_files")[0]}
    out = enc("<tool_call>anything<arg_key>")
    lim = s.follow(out)
    assert lim.allow is None and enc("</arg_key>")[0] in lim.ban  # a key is not empty
    assert enc("<arg_value>")[0] in lim.ban and enc("<tool_call>")[0] in lim.ban
    out += enc("colour</arg_key><arg_value>deep blue</arg_value><arg_key>mode</arg_key>"
               "<arg_value>")  # fmt: skip
    assert s.follow(out).allow == {enc("fast")[0], enc("slow")[0]}  # listed: its values
    out += enc("fast</arg_value><arg_key>colour")
    assert enc("</arg_key>")[0] in s.follow(out).ban  # colour is used
    none = Limiter(CallState(g), None)
    after_name = none.follow(enc("<tool_call>list_files"))
    assert enc("<arg_key>")[0] not in after_name.allow
    assert enc("</tool_call>")[0] in after_name.allow
    assert tool_grammar(tokenizer, [], []) is None
    back = ToolGrammar.from_json(tool_grammar(tokenizer, TOOLS, [5]).to_json())
    assert back == tool_grammar(tokenizer, TOOLS, [5])
    assert json.loads(back.to_json())["opening"] == [5]
    assert ToolGrammar.from_json(g.to_json()) == g


def test_one_newline_at_most_between_parts():
    """A zero-argument call looped on newlines between its name and its end (5,514 tokens
    once): one newline between two parts, then the next part."""
    s = Limiter(CallState(GRAMMAR), None)
    assert s.follow([OPEN, 10, 11]).allow == {12, CLOSE, NL}
    assert s.follow([OPEN, 10, 11, NL]).allow == {CLOSE}
    out = [OPEN, 10, 11, 12, KO, 20, KC, NL]
    assert Limiter(CallState(GRAMMAR), None).follow(out).allow == {VO}
    out = [OPEN, 10, 11, 12, KO, 20, KC, VO, 50, NL, NL, VC]  # newlines in a value are text
    walk(Limiter(CallState(GRAMMAR), None), out)
    assert Limiter(CallState(GRAMMAR), None).follow([*out, NL]).allow == {KO, CLOSE}


def test_a_thinking_budget_forces_the_end_once_spent_and_not_after_the_model_ended_it():
    from cluster.engine.grammar import ThinkBudget

    b = Limiter(None, ThinkBudget(3, EOS))
    assert b.follow([]) is FREE
    assert b.follow([40, 41]) is FREE
    assert b.follow([40, 41, 42]).allow == {EOS}
    b = Limiter(None, ThinkBudget(3, EOS))
    assert b.follow([40, EOS, 41, 42, 43]) is FREE


def test_limits_along_a_draft_run_leave_the_row_where_it_was():
    from cluster.engine.grammar import ThinkBudget

    row = Limiter(CallState(GRAMMAR), ThinkBudget(7, EOS))
    row.follow([40, 41])
    run = row.along([OPEN, 10, 11, 12, KO])
    assert run[0].ban == STRAY and run[1].allow == {10} and run[2].allow == {11}
    assert run[4].allow == {KO, NL} and run[5].allow == {EOS}  # the budget: 7 written
    assert row.follow([40, 41]).ban == STRAY  # the row itself did not move
    assert row.along([EOS, 7, 7, 7, 7])[-1].ban == STRAY  # ended by the model: no budget


def test_schemas_that_are_not_object_schemas_leave_calls_free_not_failing(tokenizer):
    odd = [
        {"type": "function", "function": {"name": "a", "parameters": {"properties": ["x"]}}},
        {"type": "function", "function": {"name": "b", "parameters": "none"}},
    ]
    for tool in odd:
        assert tool_grammar(tokenizer, [tool], []) is None
    loose = {"type": "function", "function": {"name": "c", "parameters": {
        "type": "object", "properties": {"x": "string", "y": {"enum": []}}}}}  # fmt: skip
    g = tool_grammar(tokenizer, [loose], [])
    assert [p.choices for p in g.tools[0].params] == [(), ()]  # any value


def test_number_values_stay_json_numbers_and_end_once_whole():
    ids = {"1": 60, "0": 61, "-": 62, ".": 63, "e": 64, "26": 65, "x": 66}
    params = (ToolParam((20,), kind="integer"), ToolParam((21,), kind="number"))
    number = {k: v for k, v in ids.items() if k != "x"}
    g = ToolGrammar(TAGS, (ToolSpec((10,), params),), value_banned=TAGS,
                    number_ids=tuple(number.values()), number_texts=tuple(number))  # fmt: skip

    def allowed(out):
        lim = Limiter(CallState(g), None).follow(out).allow
        return {k for k, v in ids.items() if v in lim}, VC in lim

    out = [OPEN, 10, KO, 20, KC, VO]
    assert allowed(out) == ({"1", "0", "-", "26"}, False)  # not empty, not a letter
    assert allowed(out + [ids["-"]]) == ({"1", "0", "26"}, False)  # "-" alone is no number
    assert allowed(out + [ids["0"]]) == (set(), True)  # no leading zeros: "0" is whole
    out += [ids["26"]]
    assert allowed(out) == ({"1", "0", "26"}, True)  # an integer: no "-" inside, no "."
    out += [VC, KO, 21, KC, VO, ids["1"]]
    assert allowed(out) == ({"1", "0", "26", ".", "e"}, True)
    assert allowed(out + [ids["."]]) == ({"1", "0", "26"}, False)  # "1." is not whole
    assert allowed(out + [ids["e"]]) == ({"1", "0", "26", "-"}, False)
    assert allowed(out + [ids["e"], ids["-"], ids["26"]]) == ({"1", "0", "26"}, True)


def test_the_compiled_grammar_types_number_values(tokenizer):
    g = tool_grammar(tokenizer, TOOLS, [])
    kinds = {p.key: p.kind for t in g.tools for p in t.params}
    enc = tokenizer.encode
    assert kinds[tuple(enc("pages"))] == "integer" and kinds[tuple(enc("id"))] == "number"
    assert kinds[tuple(enc("title"))] == "" and kinds[tuple(enc("format"))] == ""
    assert set(enc("123")) <= set(g.number_ids) and enc("x")[0] not in g.number_ids
    assert "".join(g.number_texts[g.number_ids.index(t)] for t in enc("123")) == "123"


NULLABLE = [{"type": "function", "function": {"name": "set_limit", "parameters": {
    "type": "object", "$defs": {"Mode": {"enum": ["fast", "slow"]}},
    "properties": {
        "n": {"type": ["integer", "null"]},
        "m": {"anyOf": [{"$ref": "#/$defs/Mode"}, {"type": "null"}]},
        "on": {"oneOf": [{"type": "boolean"}, {"type": "null"}]},
        "mode": {"$ref": "#/$defs/Mode"},
        "loop": {"$ref": "#/$defs/Loop"}, "both": {"type": ["integer", "string"]},
    },
    "required": ["n", "m", "on", "mode", "loop", "both"]}}}]  # fmt: skip


def test_nullable_and_referenced_schemas_keep_their_values(tokenizer):
    """What OpenAI's strict mode, pydantic and zod write for optional and shared fields
    ([T, "null"], anyOf with null, `$ref` to `$defs`) keeps T's values and null; a ref to
    nothing, and a union of types, stay free text."""
    g = tool_grammar(tokenizer, NULLABLE, [])
    enc = tokenizer.encode
    by_key = {tokenizer.decode(list(p.key)): p for p in g.tools[0].params}
    texts = {k: sorted(tokenizer.decode(list(c)) for c in p.choices) for k, p in by_key.items()}
    assert texts == {"n": ["null"], "m": ["fast", "null", "slow"], "on": ["false", "null", "true"],
                     "mode": ["fast", "slow"], "loop": [], "both": []}  # fmt: skip
    assert [by_key[k].kind for k in ("n", "m", "loop", "both")] == ["integer", "", "", ""]
    s = Limiter(CallState(g), None)
    out = enc("<tool_call>set_limit<arg_key>n</arg_key><arg_value>")
    first = s.follow(out).allow
    assert enc("null")[0] in first and enc("5")[0] in first and enc("lines")[0] not in first
    assert enc("</arg_value>")[0] not in first  # an empty value is neither
    for value in ("12", "null"):  # either is whole, and only its own path goes on
        lim = Limiter(CallState(g), None).follow(out + enc(value))
        assert enc("</arg_value>")[0] in lim.allow
        assert (enc("3")[0] in lim.allow) == (value == "12")


@pytest.mark.parametrize(("key", "raw", "want"), [
    ("n", "null", None), ("n", "7", 7), ("m", "null", None), ("m", "fast", "fast"),
    ("on", "true", True), ("mode", "fast", "fast"), ("both", "7", "7"),
])  # fmt: skip
def test_the_parser_types_nullable_and_referenced_values(key, raw, want):
    from cluster.coordinator.glm_output import param_types, typed_value

    assert typed_value(raw, param_types(NULLABLE)["set_limit"][key]) == want


def test_a_named_tool_choice_keeps_every_call_to_that_tool(tokenizer):
    """tool_choice naming a tool forces its call first, and the grammar then offers no other
    tool for later calls (agents run every call they get back); required and auto offer all."""
    from cluster.api.chat import build_prompt

    messages = [{"role": "user", "content": "Fetch it."}]
    names = {t["function"]["name"] for t in TOOLS}
    for choice, offered in (("fetch_document", {"fetch_document"}), ("required", names),
                            ("auto", names)):  # fmt: skip
        prompt = build_prompt(tokenizer, messages, TOOLS, choice, {})
        got = {tokenizer.decode(list(t.name)) for t in prompt.grammar.tools}
        assert got == offered, choice


TODO = [{"type": "function", "function": {"name": "todo_write", "parameters": {
    "type": "object", "$defs": {"Status": {"enum": ["pending", "done"]}},
    "properties": {
        "todos": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["status", "content"],
            "properties": {"status": {"$ref": "#/$defs/Status"}, "content": {"type": "string"}}}},
        "meta": {"anyOf": [{"type": "object", "properties": {"n": {"type": "integer"}}},
                           {"type": "null"}]},
    },
    "required": ["todos"]}}}]  # fmt: skip


def ok(lim, token: int) -> bool:
    """Whether a limit lets this token be written."""
    return lim.permits(token)


def test_array_and_object_values_are_held_to_their_schemas(tokenizer):
    """Claude Code's TodoWrite takes a list of objects: a model that wrote a string there
    (`["write"]`, `"high"`) sent a call the client's own validation refused. The value is
    now JSON its schema allows, token by token, and ends only when whole."""
    from cluster.engine.json_values import JsonValues

    values = JsonValues(FIXTURE / "tokenizer.json")
    g = tool_grammar(tokenizer, TODO, [])
    assert all(p.json for p in g.tools[0].params)
    enc = tokenizer.encode
    # Keys in the schema's order, not sorted (llguidance keeps an object's keys in it).
    args = {"todos": [{"status": "done", "content": "fix the \"parser\"\nthen test"}],
            "meta": None}  # fmt: skip
    call = {"function": {"name": "todo_write", "arguments": args}}
    messages = [{"role": "user", "content": "x"},
                {"role": "assistant", "content": "", "tool_calls": [call]}]  # fmt: skip
    text = tokenizer.hf.apply_chat_template(messages, tools=TODO, tokenize=False)
    start = text.rindex("<tool_call>")
    rendered = text[start : text.index("</tool_call>", start) + len("</tool_call>")]
    walk(Limiter(CallState(g, values), None), enc(rendered))  # GLM's own JSON is accepted
    s = Limiter(CallState(g, values), None)
    out = enc("<tool_call>todo_write<arg_key>todos</arg_key><arg_value>")
    lim = s.follow(out)
    close = enc("</arg_value>")[0]
    words = [t for t in enc("write high") if tokenizer.decode([t]).strip()]
    assert not ok(lim, close) and not any(ok(lim, t) for t in words), "a word is not a list"
    out += enc('[{"status": "done", "content": "a')
    lim = s.follow(out)
    assert not ok(lim, enc("\n")[0]) and not ok(lim, close)  # no raw newline in a string
    drafts = enc('"}]')
    along = s.along(drafts)  # a draft run is judged on a copy: the row stays where it was
    assert ok(along[-1], close) and not ok(along[0], close)
    assert s.follow(out) == lim
    out += drafts
    lim = s.follow(out)
    assert ok(lim, close) and not any(ok(lim, t) for t in values.tokenizer.eos_tokens)
    out += [close] + enc("<arg_key>meta</arg_key><arg_value>")
    assert ok(s.follow(out), enc("null")[0])  # nullable: null, or its object
    # Without llguidance's matchers (an engine built without a tokenizer) the value is free.
    free = Limiter(CallState(g, None), None)
    assert ok(free.follow(enc("<tool_call>todo_write<arg_key>todos</arg_key><arg_value>x")),
              close)  # fmt: skip


def test_schemas_as_clients_write_them_are_held_not_left_free(tokenizer):
    """pydantic's `set[...]` adds `uniqueItems`, zod points refs into the tool's own schema
    (`#/properties/a`), a tree refers to itself (`#`): each left the whole value free text
    (and its maxItems / maxLength with it)."""
    from cluster.coordinator.tool_grammar import json_grammar

    root = {"type": "object", "properties": {
        "a": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]},
        "b": {"type": "array", "items": {"$ref": "#/properties/a"}, "maxItems": 2},
        "tags": {"type": "array", "uniqueItems": True, "maxItems": 2,
                 "items": {"type": "string", "maxLength": 6}},
        "tree": {"type": "object", "properties": {"kids": {"type": "array",
                 "items": {"$ref": "#/properties/tree"}}}},
        "pick": {"oneOf": [{"type": "object", "properties": {"p": {"type": "integer"}}},
                           {"type": "object", "properties": {"q": {"type": "string"}}}]},
    }}  # fmt: skip
    for key in ("b", "tags", "tree"):
        assert json_grammar(root["properties"][key], root, False), key
    assert json_grammar({"type": "object", "anyOf": root["properties"]["pick"]["oneOf"]},
                        root, False)  # fmt: skip
    from cluster.engine.json_values import JsonValues

    values = JsonValues(FIXTURE / "tokenizer.json")
    m = values.start(json_grammar(root["properties"]["b"], root, False))
    for t in tokenizer.encode('[{"x": 1}, {"x": 2}]'):
        assert m.limit(10**6).permits(t), t
        assert m.consume(t)
    assert m.matcher.is_accepting()


APPLY_PATCH_LARK = r"""start: begin_patch hunk+ end_patch
begin_patch: "*** Begin Patch" LF
end_patch: "*** End Patch" LF?

hunk: add_hunk | delete_hunk | update_hunk
add_hunk: "*** Add File: " filename LF add_line+
delete_hunk: "*** Delete File: " filename LF
update_hunk: "*** Update File: " filename LF change_move? change?

filename: /(.+)/
add_line: "+" /(.*)/ LF -> line

change_move: "*** Move to: " filename LF
change: (change_context | change_line)+ eof_line?
change_context: ("@@" | "@@ " /(.+)/) LF
change_line: ("+" | "-" | " ") /(.*)/ LF
eof_line: "*** End of File" LF

%import common.LF
"""
"""Codex's apply_patch grammar (its custom tool's `format.definition`)."""


def test_a_custom_tools_grammar_holds_its_input(caplog):
    """A Responses custom tool (a function of one string `input` to the model) keeps that text
    to its Lark or regex grammar; a format of text, or one llguidance cannot take (logged),
    leaves it free."""
    from cluster.coordinator.tool_grammar import format_grammar

    tok = PromptTokenizer(Path(__file__).parents[2] / "cluster" / "fixture" / "trained")
    tool = {
        "type": "function",
        "function": {
            "name": "apply_patch",
            "parameters": {
                "type": "object",
                "properties": {"input": {"type": "string"}},
                "required": ["input"],
            },
        },
    }
    lark = {"type": "grammar", "syntax": "lark", "definition": APPLY_PATCH_LARK}
    g = tool_grammar(tok, [tool], [], formats={"apply_patch": lark})
    [param] = g.tools[0].params
    assert param.json and param.json == format_grammar(lark)
    assert format_grammar({"type": "grammar", "syntax": "regex", "definition": "[a-z]+"})
    assert format_grammar({"type": "text"}) == ""
    assert tool_grammar(tok, [tool], []).tools[0].params[0].json == ""  # no format: free
    with caplog.at_level("WARNING"):
        assert format_grammar({"type": "grammar", "syntax": "lark", "definition": "start: ("}) == ""
        assert format_grammar({"type": "grammar", "syntax": "ebnf", "definition": "x"}) == ""
    assert caplog.text.count("not held to its grammar") == 2


def test_bounded_values_get_their_grammars(caplog):
    """A number with a range and a string with a length or pattern get a grammar (the engine
    holds the value as GLM writes it: raw text for strings); a bound llguidance cannot read
    is logged and leaves the value free, as a huge length does."""
    from cluster.coordinator.tool_grammar import _rule, string_grammar

    assert _rule({"type": "integer", "minimum": 3, "maximum": 7}, {})[2]
    assert _rule({"type": "integer"}, {})[1:] == ("integer", "")  # unbounded: number tokens
    assert _rule({"type": "string", "maxLength": 3}, {})[2]
    assert _rule({"type": "string"}, {}) == ([], "", "")
    assert string_grammar({"pattern": "^[a-z]+$"}, False)
    assert string_grammar({"pattern": "[0-9]{3}"}, True)
    assert string_grammar({"maxLength": 100_000}, False) == ""
    with caplog.at_level("WARNING"):
        assert string_grammar({"pattern": "(?=a)b"}, False) == ""
    assert "not held to its bounds" in caplog.text
