"""Structured output: OpenAI's `response_format` (`json_object`, `json_schema`) and the
Responses API's `text.format`, as a grammar the engine holds the reply's text to (llguidance,
as it holds tool calls' JSON values). With thinking on the reply thinks first and the JSON
follows `</think>`; the reply ends once the JSON is whole."""

from ..coordinator.errors import BadRequest
from ..coordinator.tokenizer import PromptTokenizer
from ..coordinator.tool_grammar import json_grammar
from .chat import ChatPrompt

ENDS = ("<|user|>", "<|endoftext|>")
"""The token a structured reply ends with (GLM's generation config stops on both)."""


def reply_schema(fmt: dict | None, param: str) -> dict | None:
    """The JSON schema a format asks the reply to follow (None: free text). Chat nests it
    (`json_schema.schema`), the Responses API does not (`schema`)."""
    kind = (fmt or {}).get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind != "json_schema":
        raise BadRequest(f"'{param}.type' {kind!r} is not supported: text, json_object or "
                         "json_schema", param=f"{param}.type")  # fmt: skip
    spec = fmt.get("json_schema", fmt)
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        where = f"{param}.json_schema.schema" if "json_schema" in fmt else f"{param}.schema"
        raise BadRequest(f"'{where}' must be a JSON schema (an object)", param=where)
    return schema


def reply_limits(schema: dict, prompt: ChatPrompt, tokenizer: PromptTokenizer,
                 param: str) -> dict:  # fmt: skip
    """SamplingParams fields that hold the reply to `schema`. A reply that may call tools
    (Codex's `--output-schema` offers its tools beside the schema) is calls or JSON: its
    first token may open a call instead; a reply forced to call is calls only, the schema
    left to a later reply."""
    if prompt.forced:
        return {}
    grammar = json_grammar(schema, schema, False)
    if not grammar:
        raise BadRequest(f"'{param}': the schema cannot be held (llguidance refused it; the "
                         "server's log says why)", param=param)  # fmt: skip
    end = next((i for t in ENDS if (i := tokenizer.special_id(t)) is not None), None)
    if end is None:
        raise BadRequest(f"'{param}' needs a model whose tokenizer has an end-of-turn token",
                         param=param)  # fmt: skip
    after = prompt.think_end if prompt.reasoning else None
    call = tokenizer.special_id("<tool_call>") if prompt.may_call else None
    return {"reply_grammar": grammar, "reply_end_id": end, "reply_after_id": after,
            "reply_call_id": call}  # fmt: skip
