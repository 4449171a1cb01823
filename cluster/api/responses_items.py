"""The Responses API's input items (messages, calls and their outputs, reasoning) as OpenAI
checks them, and as the chat template reads them."""

from . import unseen
from .chat import tool_arguments
from .errors import ParamError

TEXT_PARTS = ("input_text", "output_text", "text", "summary_text", "reasoning_text")


def qualified(namespace: str | None, name: str) -> str:
    """A namespaced tool's name as the model sees it (Codex's MCP namespace `mcp__srv__` and
    its tool `read`: `mcp__srv__read`)."""
    if not namespace:
        return name
    return namespace + name if namespace[-1] in "_.-/:" else f"{namespace}.{name}"


def template_messages(instructions: str | None, items: str | list[dict]) -> list[dict]:
    """`instructions` and the input items as chat messages: function_call items become the
    assistant's tool_calls (of its message just before, if any), function_call_output items
    tool messages, reasoning items the next assistant turn's reasoning_content."""
    out: list[dict] = []
    if instructions:
        out.append({"role": "system", "content": instructions})
    if isinstance(items, str):
        return out + [{"role": "user", "content": items}]
    reasoning = ""
    skipped = set(not_read(items)[0])
    for i, item in enumerate(items):
        kind = item.get("type", "message")
        if i in skipped:
            continue
        if kind == "message":
            role = {"developer": "system"}.get(item["role"], item["role"])
            if role != "assistant" and reasoning:  # a reply of reasoning alone: its turn
                out.append({"role": "assistant", "content": "", "reasoning_content": reasoning})
                reasoning = ""
            entry = {"role": role, "content": text_of(item.get("content"))}
            if role == "assistant" and reasoning:
                entry["reasoning_content"], reasoning = reasoning, ""
            out.append(entry)
        elif kind == "reasoning":
            parts = (item.get("content") or []) + (item.get("summary") or [])
            reasoning += text_of(parts)
        elif kind in ("function_call", "custom_tool_call"):
            if kind == "custom_tool_call":  # its text, as the function the model sees
                args = {"input": item["input"]}
            else:
                args = tool_arguments(item.get("arguments"), f"input[{i}].arguments")
            name = qualified(item.get("namespace"), item["name"])
            call = {"id": item.get("call_id"), "type": "function",
                    "function": {"name": name, "arguments": args}}  # fmt: skip
            # One turn: the assistant's message, then its calls (as one response's items
            # come, and as the chat route templates them); a reasoning item between them
            # starts another turn.
            last = out[-1] if out else None
            if last is None or last["role"] != "assistant" or reasoning:
                last = {"role": "assistant", "content": ""}
                if reasoning:
                    last["reasoning_content"], reasoning = reasoning, ""
                out.append(last)
            last.setdefault("tool_calls", []).append(call)
        elif kind in ("function_call_output", "custom_tool_call_output"):
            text = text_of(item.get("output"))
            out.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": text})
    return out


ROLES = ("user", "assistant", "system", "developer")
NOT_READ = (
    "web_search_call", "file_search_call", "code_interpreter_call", "image_generation_call",
    "computer_call", "computer_call_output", "local_shell_call", "mcp_call", "mcp_list_tools",
    "mcp_approval_request", "mcp_approval_response", "tool_search_call", "tool_search_output",
    "compaction", "compaction_summary",
)  # fmt: skip
"""History items of OpenAI's own tools and remote compaction (a session begun against OpenAI,
or one that used its web search): left out of the prompt, with a function_call_output that
answers one of them, and counted in `x-omitted-items` and the log; refusing them would end the
session."""


def not_read(items: list[dict]) -> tuple[list[int], dict[str, int]]:
    """The indices of the items left out of the prompt, and their count by type."""
    skipped: list[int] = []
    ids: set[str] = set()
    counts: dict[str, int] = {}
    for i, item in enumerate(items):
        kind = item.get("type", "message")
        answers = kind == "function_call_output" and item.get("call_id") in ids
        if kind in NOT_READ or answers:
            skipped.append(i)
            counts[kind] = counts.get(kind, 0) + 1
            if isinstance(item.get("call_id"), str):
                ids.add(item["call_id"])
    return skipped, counts


ITEMS = ("message", "function_call", "function_call_output", "reasoning", "custom_tool_call",
         "custom_tool_call_output")  # fmt: skip


def check_parts(parts, where: str, what: str = "content") -> None:
    """A string, or a list of text parts (a refusal counts as text; an image or file is read
    as a note that it is not shown)."""
    if isinstance(parts, str):
        return
    if not isinstance(parts, list):
        raise ParamError(f"{where} must be a string or a list of parts", where)
    for j, part in enumerate(parts):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind is not None and unseen.is_unseen(part):
            continue  # read as a note that it is not shown
        if kind == "refusal":
            field = "refusal"
        elif kind in TEXT_PARTS:
            field = "text"
        elif kind is None:
            raise ParamError(f"{at} must be a part object with a 'type' ('input_text', ...)", at)
        else:
            raise ParamError(f"{at} is a '{kind}' part: the model reads {what} as text only", at)
        if not isinstance(part.get(field), str):
            raise ParamError(f"{at} ('{kind}') needs '{field}' as a string", f"{at}.{field}")


def _need_str(item: dict, key: str, where: str) -> None:
    if not isinstance(item.get(key), str) or not item[key]:
        raise ParamError(f"{where} needs '{key}' as a non-empty string", f"{where}.{key}")


def check_items(items: list[dict]) -> None:
    """Each input item's fields, as OpenAI checks them: 400s that name the field."""
    calls: set[str] = set()
    skipped = set(not_read(items)[0])
    for i, item in enumerate(items):
        at = f"input[{i}]"
        kind = item.get("type", "message")
        if i in skipped:
            continue
        if kind not in ITEMS:
            raise ParamError(
                f"{at} is a '{kind}' item: only message, function_call, function_call_output, "
                "custom_tool_call, custom_tool_call_output and reasoning items are read here "
                f"(and {', '.join(NOT_READ)} left out)",
                f"{at}.type",
            )
        if kind == "message":
            if item.get("role") not in ROLES:
                raise ParamError(f"{at}.role '{item.get('role')}' is not one of "
                                 f"{', '.join(ROLES)}", f"{at}.role")  # fmt: skip
            check_parts(item.get("content", ""), f"{at}.content")
        elif kind == "function_call":
            _need_str(item, "call_id", at)
            _need_str(item, "name", at)
            args = item.get("arguments", "{}")
            if not isinstance(args, str | dict):
                raise ParamError(f"{at}.arguments must be a JSON string of an object",
                                 f"{at}.arguments")  # fmt: skip
            calls.add(item["call_id"])
        elif kind == "custom_tool_call":
            _need_str(item, "call_id", at)
            _need_str(item, "name", at)
            if not isinstance(item.get("input"), str):
                raise ParamError(f"{at} needs 'input' as a string (the call's text)",
                                 f"{at}.input")  # fmt: skip
            calls.add(item["call_id"])
        elif kind in ("function_call_output", "custom_tool_call_output"):
            _need_str(item, "call_id", at)
            if item["call_id"] not in calls:
                raise ParamError(
                    f"{at} answers call_id '{item['call_id']}', but no function_call or "
                    "custom_tool_call item before it has that call_id",
                    f"{at}.call_id",
                )
            check_parts(item.get("output"), f"{at}.output", "tool output")
        else:  # reasoning
            for key in ("summary", "content"):
                if item.get(key) is not None:
                    if not isinstance(item[key], list):
                        raise ParamError(f"{at}.{key} must be a list of parts", f"{at}.{key}")
                    check_parts(item[key], f"{at}.{key}")


def text_of(content) -> str:
    """A message's text: a string, or its text parts joined (checked by _check_items)."""
    if content is None or isinstance(content, str):
        return content or ""
    return "\n".join(unseen.note(p) if unseen.is_unseen(p) else p.get("text") or p.get("refusal")
                   or "" for p in content)  # fmt: skip
