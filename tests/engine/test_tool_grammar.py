"""Limits in the engine, on the trained fixture. The tool-call grammar: every token of a limited
row is one its grammar allowed; the same output pipelined or not, with MTP or n-gram
speculation or without; the other rows of the batch decode as they would alone. The thinking
budget: `</think>` where the budget ends, in every mode."""

import json
import random

import pytest

from cluster.config import EngineConfig
from cluster.coordinator.tokenizer import PromptTokenizer
from cluster.coordinator.tool_grammar import tool_grammar
from cluster.engine.build import build_engine
from cluster.engine.grammar import CallState, Limiter
from cluster.fixture.agent_data import AgentData
from cluster.model_store import TRAINED
from cluster.types import EngineRequest, RequestId, SamplingParams


@pytest.fixture(scope="module")
def requests():
    """Held-out tool requests, thinking off and on, with their grammars; and a code prompt."""
    tok = PromptTokenizer(TRAINED)
    data, rng = AgentData(seed=0), random.Random(7)
    out = []
    for i in range(3):
        ex = data.conversation(held_out=True, rng=rng)
        prompt = tok.chat(ex.messages[:-1], ex.tools, enable_thinking=i == 2)
        out.append((prompt, tool_grammar(tok, ex.tools, [])))
    code = tok.encode("def add(a, b):\n    return a + b\n\ndef add(")
    return out, code


def greedy(grammar=None, n=96):
    return SamplingParams(max_tokens=n, temperature=0.0, tool_grammar=grammar)


def run(config: EngineConfig, jobs) -> list[list[int]]:
    engine, _ = build_engine(TRAINED, config, "glm-5-fixture")
    for i, (prompt, params) in enumerate(jobs):
        engine.add_request(EngineRequest(RequestId(str(i)), tuple(prompt), params))
    out: dict[str, list[int]] = {}
    while engine.has_work():
        for event in engine.step():
            out.setdefault(event.request_id, []).extend(event.token_ids)
    return [out[str(i)] for i in range(len(jobs))]


def legal(grammar, output: list[int]) -> bool:
    """Each token was one the grammar allowed given the tokens before it."""
    state = Limiter(CallState(grammar), None)
    return all(state.follow(output[:n]).permits(token) for n, token in enumerate(output))


CONFIGS = {
    "plain": EngineConfig(pipeline_decode=False),
    "pipelined": EngineConfig(),
    "mtp": EngineConfig(speculation="mtp", num_speculative_tokens=3),
    "ngram": EngineConfig(speculation="ngram", num_speculative_tokens=3),
}


def test_limited_rows_keep_to_the_grammar_alike_in_every_mode_and_others_are_untouched(requests):
    calls, code = requests
    tok = PromptTokenizer(TRAINED)
    jobs = [(p, greedy(g)) for p, g in calls] + [(code, greedy())]
    alone = run(CONFIGS["plain"], [(code, greedy())])[0]
    results = {name: run(config, jobs) for name, config in CONFIGS.items()}
    base = results["plain"]
    for name, got in results.items():
        assert got == base, name
    for (_, grammar), output in zip(calls, base[:-1], strict=True):
        assert legal(grammar, output)
        assert tok.markers.id_of("</tool_call>") in output  # a whole call was written
    assert base[-1] == alone


def test_the_grammar_changes_what_a_wrong_call_would_have_been(requests):
    """Without it, some held-out request of these comes back off the grammar (the model's
    own mistakes, `fixture-eval` counts them); with it, none does."""
    calls, _ = requests
    data, rng = AgentData(seed=0), random.Random(11)
    tok = PromptTokenizer(TRAINED)
    jobs, grammars = [], []
    for _ in range(12):
        ex = data.conversation(held_out=True, rng=rng)
        grammars.append(tool_grammar(tok, ex.tools, []))
        jobs.append(tok.chat(ex.messages[:-1], ex.tools, enable_thinking=False))
    free = run(CONFIGS["pipelined"], [(p, greedy()) for p in jobs])
    held = run(CONFIGS["pipelined"], [(p, greedy(g)) for p, g in zip(jobs, grammars, strict=True)])
    assert not all(legal(g, o) for g, o in zip(grammars, free, strict=True))
    assert all(legal(g, o) for g, o in zip(grammars, held, strict=True))


def test_a_draft_run_that_opens_a_call_stops_at_its_tag(requests):
    """Drafts that continue past `<tool_call>` are what the unlimited model would write; an
    oracle drafter proposes exactly that (seeded held-out requests, thinking on, whose free
    calls break the grammar). Verified runs stop at the tag, so the output is the limited
    one, as without speculation."""
    tok = PromptTokenizer(TRAINED)
    data, rng = AgentData(seed=0), random.Random(3)
    exs = [data.conversation(held_out=True, rng=rng) for _ in range(10)]
    picked = [exs[1], exs[3]]
    jobs = [tok.chat(ex.messages[:-1], ex.tools, enable_thinking=True) for ex in picked]
    grammars = [tool_grammar(tok, ex.tools, []) for ex in picked]
    free = run(CONFIGS["plain"], [(p, greedy(None, 128)) for p in jobs])
    held = run(CONFIGS["plain"], [(p, greedy(g, 128)) for p, g in zip(jobs, grammars, strict=True)])
    assert all(not legal(g, o) for g, o in zip(grammars, free, strict=True))

    engine, _ = build_engine(TRAINED, CONFIGS["ngram"], "glm-5-fixture")
    by_prompt = {len(p): f for p, f in zip(jobs, free, strict=True)}

    def oracle(seq, caches=None):
        future = by_prompt[seq.num_prompt]
        n = seq.num_output
        drafts = future[n : n + 3] if seq.output == future[:n] else []
        return drafts, [None] * len(drafts)

    engine.runner.drafter.propose = oracle
    for i, (prompt, g) in enumerate(zip(jobs, grammars, strict=True)):
        engine.add_request(EngineRequest(RequestId(str(i)), tuple(prompt), greedy(g, 128)))
    out: dict[str, list[int]] = {}
    while engine.has_work():
        for event in engine.step():
            out.setdefault(event.request_id, []).extend(event.token_ids)
    assert [out["0"], out["1"]] == held
    assert engine.runner.drafter.stats.accepted > 0


TODO = [{"type": "function", "function": {"name": "todo_write", "parameters": {
    "type": "object", "required": ["todos"], "properties": {"todos": {
        "type": "array", "minItems": 1, "maxItems": 2, "items": {
            "type": "object", "additionalProperties": False, "required": ["content", "status"],
            "properties": {"content": {"type": "string", "maxLength": 32},  # the model runs on
                           "status": {"enum": ["pending", "done"]}}}}}}}}]  # fmt: skip


def test_an_array_of_objects_is_written_as_its_schema_in_every_mode():
    """Claude Code's TodoWrite takes a list of objects; the built-in model wrote `["write"]`
    there. Held to its schema (json_values.py) the value is a list of such objects, the same
    in every mode, speculation included (each draft judged under its own limit)."""
    from cluster.engine.json_values import JsonValues

    tok = PromptTokenizer(TRAINED)
    messages = [{"role": "user", "content": "Write the todo list: fix the parser, then test."}]
    opening = tok.encode("<tool_call>todo_write<arg_key>todos</arg_key><arg_value>")
    prompt = tok.chat(messages, TODO, enable_thinking=False) + opening
    grammar = tool_grammar(tok, TODO, opening, calls_only=True)
    results = {name: run(config, [(prompt, greedy(grammar, 160))])[0]
               for name, config in CONFIGS.items()}  # fmt: skip
    out = results["plain"]
    assert all(got == out for got in results.values()), results
    values = JsonValues(TRAINED / "tokenizer.json")
    state = Limiter(CallState(grammar, values), None)
    for n, token in enumerate(out):
        lim = state.follow(out[:n])
        assert lim.permits(token), n
    close = tok.markers.id_of("</arg_value>")
    assert close in out, tok.decode(out)  # the value was closed, so it is whole
    todos = json.loads(tok.decode(out[: out.index(close)]))
    assert todos and all(set(t) == {"content", "status"} and isinstance(t["content"], str)
                         and t["status"] in ("pending", "done") for t in todos), todos  # fmt: skip


def test_a_thinking_budget_ends_reasoning_where_it_is_spent_in_every_mode():
    tok = PromptTokenizer(TRAINED)
    end = tok.markers.id_of("</think>")
    data, rng = AgentData(seed=0), random.Random(5)
    prompts = [tok.chat(data.conversation(held_out=True, rng=rng).messages[:-1],
                        enable_thinking=True) for _ in range(3)]  # fmt: skip
    budgets = [12, 20, 1]

    def params(b):
        return SamplingParams(max_tokens=40, temperature=0.0, thinking_budget=b,
                              thinking_end_id=end)  # fmt: skip

    free = run(CONFIGS["plain"], [(p, greedy(n=40)) for p in prompts])
    results = {name: run(config, [(p, params(b)) for p, b in zip(prompts, budgets, strict=True)])
               for name, config in CONFIGS.items()}  # fmt: skip
    for name, got in results.items():
        assert got == results["plain"], name
    for out, plain, b in zip(results["plain"], free, budgets, strict=True):
        assert end not in plain[:b]  # the model would have thought on
        assert out[:b] == plain[:b] and out[b] == end


def test_masks_keep_only_the_allowed_ids_and_skip_ids_past_the_logits():
    import mlx.core as mx

    from cluster.engine.grammar import Limit
    from cluster.engine.sampler import constrain, constrain_runs

    logits = mx.zeros((3, 8))
    out = constrain(logits, [Limit(frozenset({2, 5})), Limit(ban=frozenset({1, 99})),
                             Limit(frozenset({42}))]).tolist()  # fmt: skip
    assert [i for i, v in enumerate(out[0]) if v == 0] == [2, 5]
    assert [i for i, v in enumerate(out[1]) if v != 0] == [1]
    assert out[2] == [0.0] * 8  # nothing it allows exists: left alone, never an error
    runs = constrain_runs(mx.zeros((2, 3, 8)), [None, [Limit(frozenset({7}))]]).tolist()
    assert runs[0] == [[0.0] * 8] * 3 and runs[1][1:] == [[0.0] * 8] * 2
    assert [i for i, v in enumerate(runs[1][0]) if v == 0] == [7]
    bans = [Limit(ban=frozenset({0, 6})), Limit(), Limit(ban=frozenset({3, 99}))]  # a scatter
    out = constrain(mx.ones((3, 8)), bans).tolist()
    assert [[i for i, v in enumerate(row) if v != 1] for row in out] == [[0, 6], [], [3]]
    assert constrain(mx.ones((1, 8)), [Limit(ban=frozenset({99}))]).tolist() == [[1.0] * 8]


def test_a_structured_reply_is_json_of_its_schema_with_and_without_speculation():
    """response_format's grammar (ReplyJson): greedy and sampled rows decoding together, after
    </think> for a thinking reply; MTP and n-gram speculation give plain decoding's tokens."""
    from cluster.coordinator.tool_grammar import json_grammar

    tok = PromptTokenizer(TRAINED)
    props = {"answer": {"enum": ["yes", "no"]}, "ok": {"type": "boolean"}}
    schema = {"type": "object", "additionalProperties": False, "required": ["answer", "ok"],
              "properties": props}  # fmt: skip
    grammar, end = json_grammar(schema, schema, False), tok.special_id("<|user|>")
    think_end = tok.special_id("</think>")
    jobs = []
    for thinking in (False, True):
        prompt = tok.chat([{"role": "user", "content": "Green? JSON."}], None, False,
                          enable_thinking=thinking)  # fmt: skip
        after = think_end if thinking else None
        for temperature in (0.0, 1.0):
            params = SamplingParams(max_tokens=80, temperature=temperature, seed=7,
                                    reply_grammar=grammar, reply_end_id=end,
                                    reply_after_id=after, thinking_budget=12 if thinking else None,
                                    thinking_end_id=think_end if thinking else None)  # fmt: skip
            jobs.append((prompt, params))
    plain = run(EngineConfig(), jobs)
    for out, (_, params) in zip(plain, jobs, strict=True):
        assert out[-1] == end  # whole, then the turn's end
        start = out.index(think_end) + 1 if params.reply_after_id is not None else 0
        text = tok.decode(out[start:-1])
        got = json.loads(text)
        assert got["answer"] in ("yes", "no") and isinstance(got["ok"], bool), text
    for method in ("mtp", "ngram"):
        assert run(EngineConfig(speculation=method), jobs) == plain, method


def test_a_structured_reply_beside_tools_is_calls_or_json():
    """Structured output beside tools the reply may call (Codex's --output-schema): the reply
    opens with a call (held by the tool-call grammar) or is JSON of the schema. A held-out
    tool request comes back as its call, which the schema alone would have barred; a request
    the model answers in text is JSON; speculation gives plain decoding's tokens."""
    from cluster.coordinator.tool_grammar import json_grammar

    tok = PromptTokenizer(TRAINED)
    schema = {"type": "object", "additionalProperties": False, "required": ["answer"],
              "properties": {"answer": {"enum": ["yes", "no"]}}}  # fmt: skip
    grammar, end = json_grammar(schema, schema, False), tok.special_id("<|user|>")
    call_open = tok.special_id("<tool_call>")
    ex = AgentData(seed=0).conversation(held_out=True, rng=random.Random(7))
    rules = tool_grammar(tok, ex.tools, [])
    jobs = []
    for messages in (ex.messages[:-1], [{"role": "user", "content": "Green? JSON."}]):
        prompt = tok.chat(messages, ex.tools, enable_thinking=False)
        for call in (call_open, None):  # None: the schema alone (no call may open the reply)
            params = SamplingParams(max_tokens=64, temperature=0.0, tool_grammar=rules,
                                    reply_grammar=grammar, reply_end_id=end,
                                    reply_call_id=call)  # fmt: skip
            jobs.append((prompt, params))
    plain = run(EngineConfig(), jobs)
    asked, barred, text, json_only = plain
    assert asked[0] == call_open and legal(rules, asked), tok.decode(asked)
    assert barred[0] != call_open and json.loads(tok.decode(barred[:-1]))["answer"]
    for out in (text, json_only):  # a call (held by its grammar), or JSON of the schema
        if out[0] == call_open:
            assert legal(rules, out)
        else:
            assert out[-1] == end and json.loads(tok.decode(out[:-1]))["answer"] in ("yes", "no")
    for method in ("mtp", "ngram"):
        assert run(EngineConfig(speculation=method), jobs) == plain, method


def test_bounded_strings_and_numbers_keep_to_their_bounds():
    """A schema's `maxLength` / `pattern` on a string and `minimum` / `maximum` on a number
    hold the value as GLM writes it (clients that validate calls, OpenHands' pydantic models,
    rejected values written past them); without the bounds the same requests write longer
    strings."""
    import re

    tok = PromptTokenizer(TRAINED)
    data, rng = AgentData(seed=0), random.Random(5)
    exs = [data.conversation(held_out=True, rng=rng) for _ in range(6)]

    def bounded(tools):
        out = json.loads(json.dumps(tools))
        for t in out:
            for p in t["function"]["parameters"]["properties"].values():
                if p.get("type") == "string" and "enum" not in p:
                    p["maxLength"] = 3
                elif p.get("type") == "integer":
                    p.update(minimum=3, maximum=7)
        return out

    jobs = []
    for ex in exs:
        prompt = tok.chat(ex.messages[:-1], ex.tools, enable_thinking=False)
        jobs += [(prompt, greedy(tool_grammar(tok, ex.tools, []))),
                 (prompt, greedy(tool_grammar(tok, bounded(ex.tools), [])))]  # fmt: skip
    outs = run(CONFIGS["pipelined"], jobs)
    pair = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.S)
    longest = {False: 0, True: 0}
    for i, out in enumerate(outs):
        held = i % 2 == 1
        types = {n: p for t in bounded(exs[i // 2].tools) for n, p in
                 t["function"]["parameters"]["properties"].items()}  # fmt: skip
        text = tok._backend.decode(out, skip_special_tokens=False)
        for key, value in pair.findall(text):
            kind = types.get(key, {})
            if kind.get("maxLength"):
                longest[held] = max(longest[held], len(value))
            if held and kind.get("type") == "integer":
                assert 3 <= int(value) <= 7, (key, value)
    assert longest[True] <= 3 < longest[False], longest
