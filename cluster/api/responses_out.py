"""The Responses API's output items (reasoning, message, function_call, custom_tool_call) built
from the reply's pieces, with the events that open, fill and close each."""

import json
import secrets

from ..coordinator.coordinator import Output


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


class OutputItems:
    """Turns the reply's pieces into output items in order (reasoning, message, function
    calls), with the events that open, fill and close each."""

    def __init__(self, summary: bool = False, custom: frozenset[str] = frozenset(),
                 namespaced: dict[str, tuple[str, str]] | None = None):  # fmt: skip
        """summary: the request asked for a reasoning summary (reasoning.summary): the
        reasoning comes as it (this server does not summarize) rather than as content.
        custom: the custom tools' names (their calls are custom_tool_call items).
        namespaced: a namespace's tools by qualified name (their calls name both)."""
        self.items: list[dict] = []
        self.open: dict | None = None
        self.summary = summary
        self.custom = custom
        self.namespaced = namespaced or {}
        self._args = ""  # the open custom call's arguments as the parser streams them

    def events(self, out: Output) -> list[dict]:
        ev: list[dict] = []
        if out.reasoning:
            ev += self._start("reasoning", {"summary": [], "content": []})
            if self.summary:
                ev += self._summary(out.reasoning)
            else:
                ev += self._text(out.reasoning, "reasoning_text", "response.reasoning_text.delta")
        if out.text:
            ev += self._start("message", {"role": "assistant", "status": "in_progress",
                                          "content": []})  # fmt: skip
            ev += self._text(out.text, "output_text", "response.output_text.delta")
        for d in out.tool_calls:
            if d.id is not None:
                name = {"call_id": d.id, "name": d.name}
                if d.name in self.namespaced:
                    namespace, inner = self.namespaced[d.name]
                    name = {"call_id": d.id, "namespace": namespace, "name": inner}
            if d.id is not None and d.name in self.custom:
                self._args = ""
                ev += self._start("custom_tool_call", {**name, "input": ""}, new=True)
            elif d.id is not None:
                ev += self._start("function_call", {**name, "arguments": "",
                                                    "status": "in_progress"}, new=True)  # fmt: skip
            elif d.arguments and self.open is not None and self.open["type"] == "custom_tool_call":
                self._args += d.arguments
                ev += self._input(self.open, custom_input(self._args, done=False))
            elif d.arguments and self.open is not None:
                self.open["arguments"] += d.arguments
                ev.append(self._event("response.function_call_arguments.delta",
                                      delta=d.arguments))  # fmt: skip
        return ev

    def _input(self, item: dict, text: str) -> list[dict]:
        """A custom call's text so far: the part not yet sent, as a delta."""
        sent = item["input"]
        if len(text) <= len(sent) or not text.startswith(sent):
            return []
        item["input"] = text
        return [self._event("response.custom_tool_call_input.delta", item,
                            delta=text[len(sent) :])]  # fmt: skip

    def close(self, cut: bool = False) -> list[dict]:
        """Close the open item (`cut`: max_output_tokens ended it: incomplete)."""
        item, self.open = self.open, None
        if item is None:
            return []
        ev = []
        if item["type"] == "function_call":
            ev.append(self._event("response.function_call_arguments.done", item,
                                  arguments=item["arguments"], name=item["name"]))  # fmt: skip
        elif item["type"] == "custom_tool_call":
            whole = custom_input(self._args, done=True)
            ev += self._input(item, whole)
            item["input"] = whole  # (the arguments as written, when not the text's shape)
            ev.append(self._event("response.custom_tool_call_input.done", item,
                                  input=item["input"]))  # fmt: skip
        elif item["type"] == "reasoning" and item["summary"]:
            part = item["summary"][0]
            ev.append(self._event("response.reasoning_summary_text.done", item, summary_index=0,
                                  text=part["text"]))  # fmt: skip
            ev.append(self._event("response.reasoning_summary_part.done", item, summary_index=0,
                                  part=dict(part)))  # fmt: skip
        elif item["content"]:
            part = item["content"][0]
            kind = part["type"]
            extra = {"logprobs": []} if kind == "output_text" else {}
            ev.append(self._event(f"response.{kind}.done", item, content_index=0,
                                  text=part["text"], **extra))  # fmt: skip
            if kind == "output_text":
                ev.append(self._event("response.content_part.done", item, content_index=0,
                                      part=dict(part)))  # fmt: skip
        if "status" in item:
            item["status"] = "incomplete" if cut else "completed"
        ev.append(self._event("response.output_item.done", item, item=_copy(item)))
        return ev

    def _start(self, kind: str, fields: dict, new: bool = False) -> list[dict]:
        if self.open is not None and self.open["type"] == kind and not new:
            return []
        ev = self.close()
        prefix = {"reasoning": "rs_", "message": "msg_", "function_call": "fc_",
                  "custom_tool_call": "ctc_"}[kind]  # fmt: skip
        self.open = {"id": new_id(prefix), "type": kind, **fields}
        self.items.append(self.open)
        return ev + [self._event("response.output_item.added", item=_copy(self.open))]

    def _text(self, text: str, kind: str, delta_event: str) -> list[dict]:
        ev = []
        if not self.open["content"]:
            part = {"type": kind, "text": ""} | ({"annotations": [], "logprobs": []}
                                                 if kind == "output_text" else {})  # fmt: skip
            self.open["content"].append(part)
            if kind == "output_text":
                ev.append(self._event("response.content_part.added", content_index=0,
                                      part=dict(part)))  # fmt: skip
        self.open["content"][0]["text"] += text
        extra = {"logprobs": []} if kind == "output_text" else {}
        return ev + [self._event(delta_event, content_index=0, delta=text, **extra)]

    def _summary(self, text: str) -> list[dict]:
        ev = []
        if not self.open["summary"]:
            part = {"type": "summary_text", "text": ""}
            self.open["summary"].append(part)
            ev.append(self._event("response.reasoning_summary_part.added", summary_index=0,
                                  part=dict(part)))  # fmt: skip
        self.open["summary"][0]["text"] += text
        return ev + [self._event("response.reasoning_summary_text.delta", summary_index=0,
                                 delta=text)]  # fmt: skip

    def _event(self, kind: str, owner: dict | None = None, **fields) -> dict:
        """An event of `owner` (the open item by default)."""
        owner = owner or self.open
        index = next(i for i, it in enumerate(self.items) if it is owner)
        return {"type": kind, "output_index": index, "item_id": owner["id"], **fields}


_INPUT = '{"input": "'


def custom_input(args: str, done: bool) -> str:
    """A custom tool's text from its call's arguments as they stream (`{"input": "..."}`, the
    function the model sees): the string so far; done: the whole of it, or the arguments as
    written when the model wrote another shape (without the tool-call grammar)."""
    if args.startswith(_INPUT):
        for tail in ("", '"'):  # closed, or still open
            try:
                return json.decoder.scanstring(args + tail, len(_INPUT))[0]
            except ValueError:
                continue
    if not done:
        return ""
    try:
        value = json.loads(args)
    except ValueError:
        return args
    text = value.get("input") if isinstance(value, dict) else None
    return text if isinstance(text, str) else args


def _copy(item: dict) -> dict:
    return json.loads(json.dumps(item))


def _usage(last: Output | None) -> dict:
    """Usage in the Responses API's shape; reasoning tokens as the parser counted them."""
    prompt = last.prompt_tokens if last else 0
    output = last.num_tokens if last else 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": last.cached_tokens if last else 0,
            "cache_write_tokens": 0,
        },
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": last.reasoning_tokens if last else 0},
        "total_tokens": prompt + output,
    }


def was_cut(last: Output | None) -> bool:
    """max_output_tokens ended the reply."""
    return last is not None and last.finish_reason == "length"


def final_response(base: dict, items: OutputItems, last: Output | None) -> dict:
    """The finished response: its items, status and usage (reasoning tokens as the parser
    counted them, as chat reports them: re-encoding the text could count more than were
    written)."""
    cut = was_cut(last)
    return base | {
        "status": "incomplete" if cut else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "output": items.items,
        "usage": _usage(last),
    }
