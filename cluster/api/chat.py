"""A chat turn for GLM-5: the prompt (history, tools, thinking switch, forced tool calls) and
the processor that parses the reply, and its start on a replica. Shared by OpenAI's, the
Responses and Anthropic's routes."""

import contextlib
import dataclasses
import json
import logging
import secrets
from dataclasses import dataclass

from ..coordinator.coordinator import Coordinator, Output
from ..coordinator.errors import BadRequest
from ..coordinator.glm_output import ChatOutputProcessor, GlmParser, param_types
from ..coordinator.output import OutputProcessor
from ..coordinator.tokenizer import PromptTokenizer, TemplateArgsError
from ..coordinator.tool_grammar import CALL_TAGS, tool_grammar
from ..types import SamplingParams, ToolGrammar
from .billing_header import strip_billing_header
from .offload import LONG_TOKENS, off_loop
from .tool_check import check_tools

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChatDefaults:
    """The server's defaults for chat requests on every route."""

    template_args: dict = dataclasses.field(default_factory=dict)
    """The chat template's defaults (--chat-template-args); a request's own override them."""
    tool_grammar: bool = True
    """Keep tool calls to the offered tools' names, keys and listed values."""
    thinking_budget: int | None = None
    """Thinking tokens a reply may take when the request sets no budget (None: no limit)."""

    def budget(self, asked: int | None) -> int | None:
        return asked if asked is not None else self.thinking_budget


@dataclass(frozen=True)
class ChatPrompt:
    tokens: list[int]
    """The whole prompt, a forced opening of the reply included."""
    forced: list[int]
    """The prompt's last tokens that open the reply (a forced tool call), parsed as output."""
    reasoning: bool
    """The reply starts inside <think> (thinking on)."""
    banned: tuple[int, ...] = ()
    """Token ids the reply may not contain (tool_choice none bans <tool_call>)."""
    grammar: ToolGrammar | None = None
    """What the reply's tool calls may contain (None: unconstrained)."""
    think_end: int | None = None
    """`</think>`'s id, when the tokenizer has GLM's tags."""
    continued: bool = False
    """The reply continues text of the final assistant message (a prefill)."""
    may_call: bool = False
    """The reply may write tool calls (tools offered, tool_choice not none), with or without
    the grammar holding them."""

    def limits(self, thinking_budget: int | None = None) -> dict:
        """SamplingParams fields that limit the reply: banned tokens, the tool-call grammar,
        and the thinking budget when the reply starts inside <think>."""
        budget = thinking_budget if self.reasoning else None
        return {
            "banned_token_ids": self.banned,
            "tool_grammar": self.grammar,
            "thinking_budget": budget,
            "thinking_end_id": self.think_end if budget is not None else None,
        }


CLOSINGS = ("", "}", '"}', "]}", '"]}', "}}", '"}}')
"""What a call cut off by max_tokens may lack at its end (`{"path": "src/a`, `{"days": 3`)."""
_warned: dict[int, None] = {}  # calls already logged (an agent resends each every turn)


def _warn_once(text: str, message: str, *args) -> None:
    """Log a resent call's problem the first time it is seen (the last 1,024 remembered)."""
    key = hash(text)
    if key in _warned:
        return
    _warned[key] = None
    if len(_warned) > 1024:
        del _warned[next(iter(_warned))]
    log.warning(message, *args)


def tool_arguments(arguments, param: str) -> dict:
    """A call's arguments as a mapping, from OpenAI's JSON string or a mapping. A string cut
    off mid-value (a reply that ended at max_tokens, this server's own among them: an agent
    resends it with its history) is read up to the cut, logged; refusing it would fail every
    later turn of the session. JSON of another type than an object (`null`, a list) is read
    as no arguments, logged, for the same reason; a value that is not a string is a 400."""
    if isinstance(arguments, dict):
        return arguments
    if arguments is not None and not isinstance(arguments, str):
        raise BadRequest(f"'{param}' must be a JSON string of an object", param=param)
    text = arguments or "{}"
    trimmed = text.rstrip().rstrip(",")  # cut after a pair: `{"a": 1, `
    for closing in CLOSINGS:
        try:
            value = json.loads((text if not closing else trimmed) + closing)
        except ValueError:
            continue
        if isinstance(value, str) and not closing:  # encoded twice
            with contextlib.suppress(ValueError):
                value = json.loads(value)
        if not isinstance(value, dict):
            if value is not None:
                _warn_once(text, "%s: a call's arguments are JSON but not an object (%r); "
                           "templated without them", param, text[:60])  # fmt: skip
            return {}
        if closing:
            _warn_once(text, "%s: a call's arguments cut off (%d chars) read up to the cut",
                       param, len(text))  # fmt: skip
        return value
    _warn_once(text, "%s: a call's arguments are not JSON (%d chars: %r); templated without "
               "them", param, len(text), text[:60])  # fmt: skip
    return {}


def openai_messages(messages) -> list[dict]:
    """OpenAI chat messages as the template reads them: tool calls, their results and past
    reasoning kept."""
    out = []
    for i, m in enumerate(messages):
        role = "system" if m.role == "developer" else m.role
        text = m.text()
        entry: dict = {
            "role": role,
            "content": strip_billing_header(text) if role == "system" else text,
        }
        if m.role == "assistant":
            reasoning = m.reasoning_text()
            if reasoning:
                entry["reasoning_content"] = reasoning
            calls = []
            for j, call in enumerate(m.tool_calls or []):
                param = f"messages.{i}.tool_calls.{j}.function.arguments"
                calls.append(
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {
                            "name": call.function.name,
                            "arguments": tool_arguments(call.function.arguments, param),
                        },
                    }
                )
            if calls:
                entry["tool_calls"] = calls
        if m.role == "tool" and m.tool_call_id:
            entry["tool_call_id"] = m.tool_call_id
        out.append(entry)
    return out


def build_prompt(
    tokenizer: PromptTokenizer,
    messages: list[dict],
    tools: list[dict] | None,
    tool_choice: str | None,
    template_args: dict,
    grammar: bool = True,
    continue_final: bool = False,
    formats: dict[str, dict] | None = None,
) -> ChatPrompt:
    """tool_choice: None/'auto', 'none', 'required', or a tool's name. A forced call opens the
    reply with `<tool_call>` (and the name) and skips thinking for that turn. grammar: keep
    the reply's calls to the offered tools' names, keys and listed values. continue_final:
    the reply continues the final (assistant) message, which stays open. formats: custom
    tools' formats by name (`tool_grammar`)."""
    markers = tokenizer.markers
    if not messages:
        raise BadRequest("the conversation is empty: send at least one message with content",
                         param="messages")  # fmt: skip
    if tools:
        check_tools(tools)
    if tools and markers is None:
        raise BadRequest(
            "this model's tokenizer has no GLM tool-call tokens, so tool calls cannot be "
            "parsed; send the request without 'tools'",
            param="tools",
        )
    forced_text = ""
    if tool_choice == "required":
        template_args = template_args | {"enable_thinking": False}
        forced_text = "<tool_call>"
    elif tool_choice not in (None, "auto", "none"):  # a named call: its name, then its first key
        template_args = template_args | {"enable_thinking": False}
        forced_text = f"<tool_call>{tool_choice}" + (
            "<arg_key>" if param_types(tools).get(tool_choice) else "</tool_call>"
        )
    try:
        prompt = tokenizer.chat(messages, tools or None, continue_final, **template_args)
    except TemplateArgsError as e:
        raise BadRequest(str(e), param=e.param) from None
    except ValueError:
        if not continue_final:
            raise
        raise BadRequest(  # HF's check: the template dropped part of the final message
            "this model's chat template cannot continue the final assistant message; send it "
            "without that message", param="messages",
        ) from None  # fmt: skip
    forced = tokenizer.encode(forced_text) if forced_text else []
    reasoning = bool(markers) and not forced and prompt[-1:] == [markers.id_of("<think>")]
    # No tools offered means none (OpenAI's default then): a call could name no real tool.
    no_calls = tool_choice == "none" or not tools
    # Every call tag: a reply that cannot call must not write a call's keys and values
    # either (the parser drops tags out of place, which would run their text together).
    banned = tuple(markers.id_of(t) for t in CALL_TAGS) if no_calls and markers else ()
    # A named choice keeps every call of the reply to that tool (OpenAI and Anthropic force
    # it; an agent runs each call it gets back).
    named = tool_choice not in (None, "auto", "none", "required")
    callable_ = [t for t in tools or [] if t.get("function", t).get("name") == tool_choice]
    callable_ = callable_ if named else tools
    rules = (
        tool_grammar(tokenizer, callable_, forced, bool(forced), formats)
        if grammar and not no_calls
        else None
    )
    end = markers.id_of("</think>") if markers else None
    continued = continue_final and bool(messages[-1].get("content"))
    return ChatPrompt(prompt + forced, forced, reasoning, banned, rules, end, continued,
                      not no_calls)  # fmt: skip


def with_defaults(sampling: SamplingParams, body, defaults: dict) -> SamplingParams:
    """The checkpoint's sampling defaults (generation_config.json) for the fields the request
    left out."""
    given = body.model_fields_set
    return dataclasses.replace(sampling, **{k: v for k, v in defaults.items() if k not in given})


async def start(coordinator: Coordinator, request, body, rid: str, tokens: list[int],
                sampling: SamplingParams, processor):  # fmt: skip
    """Send a request to its replica (the checkpoint's sampling defaults filled in, its
    block hashes off the event loop when long): its stream and the headers every route
    sends."""
    sampling = with_defaults(sampling, body, coordinator.tokenizer.generation_defaults)
    hashes = await off_loop(len(tokens) > LONG_TOKENS, coordinator.prompt_hashes, tokens)
    session = session_key(request, body)
    stream = coordinator.start(rid, tokens, sampling, processor, session, hashes,
                               opens_conversation(body))  # fmt: skip
    headers = {"x-request-id": rid, "x-replica": stream.replica.name,
               "x-speculation": stream.replica.speculation_summary}  # fmt: skip
    return stream, headers


def opens_conversation(body) -> bool:
    """A conversation's first request: no assistant turn or tool result yet (chat, Messages,
    Responses); a raw completion prompt never says so."""
    first = ("system", "developer", "user")
    if (messages := getattr(body, "messages", None)) is not None:
        return all(getattr(m, "role", None) in first for m in messages)
    items = getattr(body, "input", None)
    if isinstance(items, str):
        return True
    return isinstance(items, list) and all(
        isinstance(i, dict) and i.get("type", "message") == "message" and i.get("role") in first
        for i in items
    )


SESSION_HEADERS = ("x-session-id", "x-session-affinity", "session_id", "conversation_id")
"""Headers that name an agent's session: ours, opencode's, then Codex CLI's."""


def session_key(request, body) -> str | None:
    """What sticks a conversation to its replica: a session header, else OpenAI's
    `prompt_cache_key`, else Anthropic's `metadata.user_id` when it names a session (Claude
    Code's does)."""
    for name in SESSION_HEADERS:
        if value := request.headers.get(name):
            return value
    if key := getattr(body, "prompt_cache_key", None):
        return str(key)
    metadata = getattr(body, "metadata", None)
    user = str(metadata.get("user_id") or "") if isinstance(metadata, dict) else ""
    if "_session_" in user:  # Claude Code's `user_..._account_..._session_<id>`; a user id
        return user  # alone (a gateway's one account, say) would pin every request to a replica
    return None


def outcome_headers(headers: dict, stream, last: Output | None) -> dict:
    """A whole reply's headers: the replica that served it (a failover moves a request before
    its first token) and what speculation the request got, now that both are known."""
    headers["x-replica"] = stream.replica.name
    if last is not None:
        headers["x-speculation-accepted"] = f"{last.accepted_tokens}/{last.draft_tokens}"
        if last.speculation:
            headers["x-speculation"] = last.speculation
    return headers


def new_call_id(prefix: str = "call_") -> str:
    return prefix + secrets.token_hex(12)


def chat_processor(
    tokenizer: PromptTokenizer,
    prompt: ChatPrompt,
    tools: list[dict] | None,
    stops: list[str],
    max_calls: int | None = None,
    call_prefix: str = "call_",
):
    """The reply's processor: GLM's parser when the tokenizer has its tags, else plain text."""
    if tokenizer.markers is None:
        return OutputProcessor(tokenizer.decode, stops, tokenizer.stream_bytes)
    parser = GlmParser(
        tokenizer.markers,
        tokenizer.decode,
        tools,
        reasoning=prompt.reasoning,
        call_ids=lambda _: new_call_id(call_prefix),
        token_bytes=tokenizer.stream_bytes,
        continuing=prompt.continued,
    )
    opening = parser.feed(prompt.forced)
    return ChatOutputProcessor(parser, stops, max_calls, opening)
