"""GLM-5's output format parsed from tokens: reasoning, content, tool calls, their variants."""

import json

import pytest

from cluster.coordinator.glm_output import (
    TAGS,
    ChatOutputProcessor,
    GlmParser,
    Markers,
    ToolCallDelta,
    typed_value,
)

# A toy tokenizer: tags are single ids, every other character is its own token.
TAG_IDS = {tag: 1000 + i for i, tag in enumerate(TAGS)}
MARKERS = Markers.from_vocab(TAG_IDS)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "days": {"type": "integer"},
                    "detailed": {"type": "boolean"},
                    "zip": {"type": "string"},
                    "filters": {"type": "object"},
                },
            },
        },
    }
]


def encode(text: str) -> list[int]:
    ids, i = [], 0
    while i < len(text):
        tag = next((t for t in TAGS if text.startswith(t, i)), None)
        if tag:
            ids.append(TAG_IDS[tag])
            i += len(tag)
        else:
            ids.append(ord(text[i]))
            i += 1
    return ids


def decode(ids) -> str:
    return "".join(chr(i) for i in ids if i < 1000)


def parse(text: str, reasoning=False, chunk=1, tools=TOOLS):
    """Feed the text's tokens `chunk` at a time; returns (content, reasoning, calls, deltas)."""
    parser = GlmParser(MARKERS, decode, tools, reasoning=reasoning)
    ids = encode(text)
    content, thought, deltas = "", "", []
    for i in range(0, len(ids), chunk):
        d = parser.feed(ids[i : i + chunk])
        content, thought, deltas = content + d.content, thought + d.reasoning, deltas + d.tool_calls
    d = parser.finish()
    content, thought, deltas = content + d.content, thought + d.reasoning, deltas + d.tool_calls
    return content, thought, parser.calls, deltas


def reassemble(deltas) -> list[tuple[str, str]]:
    calls: dict[int, list] = {}
    for d in deltas:
        if d.id is not None:
            calls[d.index] = [d.name, ""]
        else:
            calls[d.index][1] += d.arguments
    return [tuple(calls[i]) for i in sorted(calls)]


def test_no_markup_is_plain_content():
    content, thought, calls, _ = parse("Hello, world.")
    assert (content, thought, calls) == ("Hello, world.", "", [])


def test_reasoning_then_answer_when_the_prompt_opened_think():
    content, thought, calls, _ = parse("I should greet.</think>Hi!", reasoning=True)
    assert (thought, content, calls) == ("I should greet.", "Hi!", [])


def test_think_opened_by_the_model_and_a_stray_close_dropped():
    content, thought, _, _ = parse("<think>hmm</think>\nok</think>")
    assert (thought, content) == ("hmm", "ok")


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_one_call_typed_by_the_schema_and_streamed(chunk):
    text = (
        "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Paris</arg_value>"
        "<arg_key>days</arg_key><arg_value>3</arg_value>"
        "<arg_key>detailed</arg_key><arg_value>true</arg_value>"
        "<arg_key>zip</arg_key><arg_value>00123</arg_value></tool_call>"
    )
    content, _, calls, deltas = parse(text, chunk=chunk)
    assert content == ""
    [call] = calls
    assert call.name == "get_weather" and call.complete
    assert call.arguments == {"city": "Paris", "days": 3, "detailed": True, "zip": "00123"}
    [(name, arguments)] = reassemble(deltas)
    assert name == "get_weather" and json.loads(arguments) == call.arguments
    assert arguments == call.arguments_json
    assert deltas[0].id and deltas[0].name == "get_weather" and not deltas[0].arguments


def test_no_arguments():
    _, _, [call], deltas = parse("<tool_call>get_weather</tool_call>")
    assert call.arguments == {} and call.complete
    assert reassemble(deltas) == [("get_weather", "{}")]


def test_several_calls_after_reasoning_and_text():
    text = (
        "Two cities.</think>Checking both."
        "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Oslo</arg_value></tool_call>"
        "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Lima</arg_value></tool_call>"
    )
    content, thought, calls, deltas = parse(text, reasoning=True)
    assert thought == "Two cities." and content == "Checking both."
    assert [c.arguments["city"] for c in calls] == ["Oslo", "Lima"]
    assert [c.index for c in calls] == [0, 1] and calls[0].id != calls[1].id
    assert [json.loads(a) for _, a in reassemble(deltas)] == [{"city": "Oslo"}, {"city": "Lima"}]


def test_json_values_and_values_with_markup():
    text = (
        "<tool_call>get_weather<arg_key>filters</arg_key>"
        '<arg_value>{"min": 2, "tags": ["a", "b"]}</arg_value>'
        "<arg_key>city</arg_key><arg_value><b>New</b> York & </tool> 'x'</arg_value></tool_call>"
    )
    _, _, [call], _ = parse(text)
    assert call.arguments["filters"] == {"min": 2, "tags": ["a", "b"]}
    assert call.arguments["city"] == "<b>New</b> York & </tool> 'x'"


def test_glm45_newlines_after_the_name_and_between_pairs():
    text = (
        "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Rome</arg_value>\n"
        "<arg_key>days</arg_key>\n<arg_value>2</arg_value>\n</tool_call>"
    )
    _, _, [call], _ = parse(text)
    assert call.name == "get_weather" and call.arguments == {"city": "Rome", "days": 2}


def test_string_values_keep_their_edge_newlines():
    """A file written by a Write tool keeps its last line break; an edit's old_string its
    leading one (GLM's template writes string values raw, between the tags)."""
    text = ("<tool_call>get_weather<arg_key>city</arg_key><arg_value>import os\n</arg_value>"
            "<arg_key>zip</arg_key><arg_value>\n  x = 1\n</arg_value>"
            "<arg_key>days</arg_key><arg_value>\n2\n</arg_value></tool_call>")  # fmt: skip
    _, _, [call], _ = parse(text)
    assert call.arguments == {"city": "import os\n", "zip": "\n  x = 1\n", "days": 2}


def test_a_lone_value_for_an_array_is_its_one_item():
    assert typed_value("ls", "array") == ["ls"]
    assert typed_value('["ls", "-l"]', "array") == ["ls", "-l"]
    assert typed_value("3", "array") == [3]
    assert typed_value("ls", "object") == "ls"  # no key to put it under: left as written


def test_array_items_are_typed_by_their_items_schema():
    """A client that validates the schema (pydantic, Claude Code's tools) refused `[64]` for
    an array of strings; items of another scalar type are cast where they can be."""
    tools = [{"type": "function", "function": {"name": "tag", "parameters": {
        "type": "object", "$defs": {"n": {"type": "integer"}}, "properties": {
            "tags": {"type": "array", "items": {"type": "string"}},
            "ids": {"type": "array", "items": {"$ref": "#/$defs/n"}},
            "maybe": {"anyOf": [{"type": "array", "items": {"type": ["boolean", "null"]}},
                                {"type": "null"}]},
            "rows": {"type": "array", "items": {"type": "object"}},
        }}}}]  # fmt: skip
    text = ("<tool_call>tag<arg_key>tags</arg_key><arg_value>[64, true, \"a\", 1.5]</arg_value>"
            "<arg_key>ids</arg_key><arg_value>[\"3\", 4, \"x\", \"2.5\"]</arg_value>"
            "<arg_key>maybe</arg_key><arg_value>[\"true\", null, \"no\"]</arg_value>"
            "<arg_key>rows</arg_key><arg_value>[\"r\", 1]</arg_value></tool_call>")  # fmt: skip
    _, _, [call], _ = parse(text, tools=tools)
    assert call.arguments == {"tags": ["64", "true", "a", "1.5"], "ids": [3, 4, "x", "2.5"],
                              "maybe": [True, None, "no"], "rows": ["r", 1]}  # fmt: skip
    assert json.loads(call.arguments_json) == call.arguments  # what the client reads


def test_unknown_tool_values_try_json_then_python_then_raw():
    assert typed_value("7", None) == 7
    assert typed_value("True", None) is True
    assert typed_value("[1, 'a']", None) == [1, "a"]
    assert typed_value("not json", None) == "not json"
    assert typed_value("7", "string") == "7"
    _, _, [call], _ = parse(
        "<tool_call>other<arg_key>n</arg_key><arg_value>5</arg_value></tool_call>"
    )
    assert call.arguments == {"n": 5}


def test_a_call_cut_off_keeps_what_completed_and_is_not_complete():
    text = (
        "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Paris</arg_value>"
        "<arg_key>days</arg_key><arg_value>3"
    )
    content, _, [call], deltas = parse(text)
    assert content == "" and not call.complete
    assert call.arguments == {"city": "Paris"}
    # The number cut off ends the arguments as written (it may have gone on: 3 or 30).
    assert reassemble(deltas) == [("get_weather", '{"city": "Paris", "days": 3')]


def test_a_call_cut_inside_its_first_value_shows_that_value_started():
    """Cut inside a non-string first value, the arguments were "" (nothing completed): the
    client saw a call with no trace of where it was cut."""
    text = "<tool_call>get_weather<arg_key>days</arg_key><arg_value>1"
    _, _, [call], deltas = parse(text)
    assert call.arguments == {} and not call.complete
    assert reassemble(deltas) == [("get_weather", '{"days": 1')]


@pytest.mark.parametrize("chunk", [1, 4])
def test_a_string_value_streams_as_it_is_written(chunk):
    """A file a Write call carries shows as GLM writes it: the string's pieces arrive before its
    value ends, escaped piece by piece, and join to the same JSON as the whole call; other
    types arrive whole once their value ends."""
    body = 'def f():\n    return "a\\b"\t\u00e9\n'
    text = (f"<tool_call>get_weather<arg_key>city</arg_key><arg_value>{body}</arg_value>"
            "<arg_key>days</arg_key><arg_value>12</arg_value></tool_call>")  # fmt: skip
    parser = GlmParser(MARKERS, decode, TOOLS)
    ids, pieces = encode(text), []
    for i in range(0, len(ids), chunk):
        pieces += [d.arguments for d in parser.feed(ids[i : i + chunk]).tool_calls if d.id is None]
    [call] = parser.calls
    assert call.arguments == {"city": body, "days": 12}
    assert "".join(pieces) == call.arguments_json and json.loads(call.arguments_json) == {
        "city": body, "days": 12}  # fmt: skip
    assert pieces[0].startswith('{"city": "') and len(pieces) >= len(body) // chunk
    assert '"days": 12' in pieces[-2] or '"days": 12' in pieces[-1]  # the integer whole


def test_a_call_cut_inside_a_string_value_has_streamed_its_start():
    """Cut by max_tokens inside a string, the call's arguments end with the value's start (as
    OpenAI's do: not JSON); the parsed arguments keep only the completed values."""
    text = (
        "<tool_call>get_weather<arg_key>days</arg_key><arg_value>3</arg_value>"
        "<arg_key>city</arg_key><arg_value>Par"
    )
    _, _, [call], deltas = parse(text)
    assert call.arguments == {"days": 3} and not call.complete
    assert reassemble(deltas) == [("get_weather", '{"days": 3, "city": "Par')]


def test_one_feed_sends_one_argument_delta_per_call():
    _, _, _, deltas = parse(
        "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Oslo</arg_value></tool_call>",
        chunk=1000,
    )
    assert [(d.id is not None, d.arguments) for d in deltas] == [
        (True, ""),
        (False, '{"city": "Oslo"}'),
    ]


def one_delta(proc, text_or_ids, finish):
    ids = encode(text_or_ids) if isinstance(text_or_ids, str) else text_or_ids
    [d] = proc.pieces(ids, finish)
    return d


def test_processor_reports_tool_calls_and_keeps_stop_strings_to_content():
    parser = GlmParser(MARKERS, decode, TOOLS)
    proc = ChatOutputProcessor(parser, stops=["York"])
    call = "<tool_call>get_weather<arg_key>city</arg_key><arg_value>York</arg_value></tool_call>"
    d = one_delta(proc, call, None)
    assert d.finish_reason is None and d.text == ""
    d = one_delta(proc, [], "stop")
    assert d.finish_reason == "tool_calls"


def test_processor_with_one_call_allowed_finishes_after_it_and_drops_the_rest():
    """A speculative step can carry the first call's end and a second call's start: with one
    call allowed, the reply ends at the first call's end and the rest is neither sent nor
    counted (usage is the same as without speculation)."""
    proc = ChatOutputProcessor(GlmParser(MARKERS, decode, TOOLS), stops=[], max_calls=1)
    one = "<tool_call>get_weather<arg_key>city</arg_key><arg_value>A</arg_value></tool_call>"
    d = one_delta(proc, one + "<tool_call>get_weather<arg_key>", None)
    assert d.finish_reason == "tool_calls" and proc.num_tokens == len(encode(one))
    assert {c.index for c in d.tool_calls} == {0} and len(proc.parser.calls) == 1


def test_processor_length_finish_stays_length_for_a_cut_call():
    proc = ChatOutputProcessor(GlmParser(MARKERS, decode, TOOLS), stops=[])
    d = one_delta(proc, "<tool_call>get_weather<arg_key>ci", "length")
    assert d.finish_reason == "length" and d.text == ""
    assert d.tool_calls[0].name == "get_weather"


def test_a_step_that_ends_a_call_and_goes_on_with_text_is_two_deltas_in_order():
    """Each delta is reasoning, then text, then call pieces (the order Anthropic's blocks and
    the Responses items are built in); a step of several tokens that closes a call and writes
    text after it is two deltas, and the whole reply's blocks come out in generation order."""
    from cluster.api.anthropic import _Blocks
    from cluster.api.responses_out import OutputItems as _Items
    from cluster.coordinator.coordinator import Output

    text = ("Checking.<tool_call>get_weather<arg_key>city</arg_key><arg_value>Oslo</arg_value>"
            "</tool_call>Done.")  # fmt: skip
    ids = encode(text)
    cut = ids.index(TAG_IDS["</tool_call>"])
    proc = ChatOutputProcessor(GlmParser(MARKERS, decode, TOOLS), stops=[])
    deltas = proc.pieces(ids[: cut - 2], None) + proc.pieces(ids[cut - 2 :], "stop")
    assert [(d.text, [t.arguments for t in d.tool_calls]) for d in deltas] == [
        ("Checking.", ["", '{"city": "Osl']),
        ("", ['o"}']),
        ("Done.", []),
    ]
    assert [d.finish_reason for d in deltas] == [None, None, "tool_calls"]
    assert sum(len(d.token_ids) for d in deltas) == len(ids) == proc.num_tokens
    blocks, items = _Blocks(), _Items()
    for d in deltas:
        out = Output(d.text, 0, d.finish_reason, 1, 0, tool_calls=d.tool_calls)
        blocks.events(out)
        items.events(out)
    blocks.close()
    items.close()
    assert [b["type"] for b in blocks.blocks] == ["text", "tool_use", "text"]
    assert blocks.blocks[1]["input"] == {"city": "Oslo"} and blocks.blocks[2]["text"] == "Done."
    assert [i["type"] for i in items.items] == ["message", "function_call", "message"]
    assert items.items[1]["arguments"] == '{"city": "Oslo"}'


def test_a_call_inside_the_reasoning_goes_back_to_the_reasoning():
    content, thought, [call], _ = parse(
        "Let me check.<tool_call>get_weather<arg_key>city</arg_key><arg_value>Oslo</arg_value>"
        "</tool_call>Still thinking.</think>Answer.",
        reasoning=True,
    )
    assert thought == "Let me check.Still thinking." and content == "Answer."
    assert call.complete and call.arguments == {"city": "Oslo"}


def test_a_whole_anthropic_reply_keeps_its_blocks_in_generation_order():
    """A call, then text (GLM writes text after a call when nothing forces calls only): the
    whole reply's blocks are built piece by piece as the stream's are; once all text was
    merged into one block before the calls."""
    from cluster.api.anthropic import _Blocks
    from cluster.api.openai_out import Collected
    from cluster.coordinator.coordinator import Output

    pieces = [
        Output("Let me look.", 3, None, 10, 0),
        Output("", 5, None, 10, 0, tool_calls=[ToolCallDelta(0, "toolu_1", "read_file")]),
        Output("", 7, None, 10, 0, tool_calls=[ToolCallDelta(0, arguments='{"path": "a"}')]),
        Output("Done.", 9, "stop", 10, 0),
    ]
    got, streamed = Collected(), _Blocks()
    for out in pieces:
        got.add(out)
        streamed.events(out)
    whole = _Blocks()
    for out in got.outputs:
        whole.events(out)
    for b in (whole, streamed):
        b.close()
    assert [b["type"] for b in whole.blocks] == ["text", "tool_use", "text"]
    assert whole.blocks == streamed.blocks and whole.blocks[1]["input"] == {"path": "a"}


def _served(text: str, sizes, stops=(), max_calls=None, reasoning=False, opening=""):
    """What a client gets for `text` sent in events of the given sizes (cycled): reasoning,
    content, calls as (name, arguments), finish, tokens counted, Anthropic's block kinds."""
    from cluster.api.anthropic import _Blocks
    from cluster.coordinator.coordinator import Output

    parser = GlmParser(MARKERS, decode, TOOLS, reasoning=reasoning)
    first = parser.feed(encode(opening)) if opening else None
    proc = ChatOutputProcessor(parser, list(stops), max_calls, first)
    ids, deltas, i, n = encode(text), [], 0, 0
    while i < len(ids) and not (deltas and deltas[-1].finish_reason):
        size = sizes[n % len(sizes)]
        deltas += proc.pieces(ids[i : i + size], "stop" if i + size >= len(ids) else None)
        i, n = i + size, n + 1
    if not deltas or not deltas[-1].finish_reason:
        deltas += proc.pieces([], "stop")
    blocks = _Blocks()
    for d in deltas:
        blocks.events(Output(d.text, 0, d.finish_reason, 1, 0, reasoning=d.reasoning,
                             tool_calls=d.tool_calls))  # fmt: skip
    blocks.close()
    assert sum(len(d.token_ids) for d in deltas) == proc.num_tokens
    return ("".join(d.reasoning for d in deltas), "".join(d.text for d in deltas),
            reassemble([t for d in deltas for t in d.tool_calls]), deltas[-1].finish_reason,
            proc.num_tokens, [b["type"] for b in blocks.blocks])  # fmt: skip


CALL = "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Oslo</arg_value></tool_call>"
REPLIES = [  # (text, options)
    ("Hi STOP" + CALL + "more", {"stops": ["STOP"]}),
    ("Let me see." + CALL + "Done." + CALL, {}),
    (CALL + "after" + CALL, {"max_calls": 1}),
    ("think" + CALL + "more</think>Answer STO" + "P.", {"reasoning": True, "stops": ["STOP"]}),
    ("Hmm<tool_call>get_weather<arg_key>ci</think>ty</arg_key><arg_value>Oslo</arg_value>"
     "</tool_call>The answer.", {"reasoning": True}),
    ("<arg_key>days</arg_key><arg_value>3</arg_value></tool_call>Hello" + CALL,
     {"max_calls": 1, "opening": "<tool_call>get_weather"}),
    ("Hello" + CALL, {"max_calls": 1, "opening": CALL}),
]  # fmt: skip


@pytest.mark.parametrize("text,options", REPLIES)
def test_what_a_client_gets_does_not_depend_on_the_event_sizes(text, options):
    """Speculation sends several tokens per event: the reply a client reads (text, reasoning,
    calls, finish, usage, block order) is the one of one token per event."""
    one = _served(text, [1], **options)
    for sizes in ([2], [3], [5], [1, 4, 2], [1000]):
        assert _served(text, sizes, **options) == one, sizes


def test_the_event_size_cases_read_as_they_should():
    """Stop string then a call: the reply ends at the stop string, no call; a thinking budget
    that closes the reasoning inside a call (written in the reasoning) leaves the answer
    content; one call allowed, reached by the forced opening and its first tokens: nothing
    after it is sent or counted."""
    stop = _served(*REPLIES[0][:1], [1], **REPLIES[0][1])
    assert stop[1:4] == ("Hi ", [], "stop") and stop[4] == len(encode("Hi STOP"))
    budget = _served(REPLIES[4][0], [1], **REPLIES[4][1])
    assert budget[:2] == ("Hmm", "The answer.") and budget[5] == ["thinking", "tool_use", "text"]
    forced = _served(REPLIES[5][0], [1], **REPLIES[5][1])
    assert forced[2] == [("get_weather", '{"days": 3}')] and forced[3] == "tool_calls"
    assert forced[4] == len(encode("<arg_key>days</arg_key><arg_value>3</arg_value></tool_call>"))
    whole = _served(REPLIES[6][0], [1], **REPLIES[6][1])  # the opening is the one call
    assert whole[1:5] == ("", [("get_weather", '{"city": "Oslo"}')], "tool_calls", 0)


def test_a_cut_tool_use_input_keeps_the_completed_values():
    from cluster.api.anthropic import _loads_partial

    assert _loads_partial('{"days": 3, "city": "Par') == {"days": 3}
    assert _loads_partial('{"city": "A", "city": "B') == {"city": "A"}  # a key written twice
    assert _loads_partial('{"f": {"a": 1, "b": 2}, "note": "x') == {"f": {"a": 1, "b": 2}}
    assert _loads_partial('{"days": 3') == {"days": 3} and _loads_partial("") == {}
