"""Content a text model cannot read (images, audio, files): read as a note in its place, and
said in the response's `x-omitted-content` header and the log, never silently dropped. An
agent resends its whole history every turn, so refusing a screenshot it once read would end
the session."""

import logging

log = logging.getLogger(__name__)

NOTE = "[{kind} not shown: this model reads text only]"
KINDS = {
    "image": "image", "image_url": "image", "input_image": "image",
    "document": "document", "file": "file", "input_file": "file", "input_audio": "audio",
}  # fmt: skip
"""Part or block types (Anthropic's, OpenAI chat's, the Responses API's) -> what they are."""


def is_unseen(part: dict) -> bool:
    """A part the model cannot read (an Anthropic plain-text document it can)."""
    return part.get("type") in KINDS and document_text(part) is None


def document_text(part: dict) -> str | None:
    """An Anthropic document the model can read: a plain-text source's data, or a content
    source's text blocks joined by newlines; None for any other part."""
    source = part.get("source") if isinstance(part.get("source"), dict) else {}
    if part.get("type") != "document":
        return None
    if source.get("type") == "text":
        return str(source.get("data") or "")
    blocks = source.get("content")
    if source.get("type") == "content" and isinstance(blocks, str):
        return blocks
    if (
        source.get("type") == "content"
        and isinstance(blocks, list)
        and all(
            isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
            for b in blocks
        )
    ):
        return "\n".join(b["text"] for b in blocks)
    return None


def note(part: dict) -> str:
    return NOTE.format(kind=KINDS[part["type"]])


def count(value) -> dict[str, int]:
    """Unreadable parts anywhere in a request's content: {"image": 2, ...}."""
    found: dict[str, int] = {}

    def walk(v):
        if isinstance(v, dict):
            if is_unseen(v):
                kind = KINDS[v["type"]]
                found[kind] = found.get(kind, 0) + 1
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(value)
    return found


def with_header(headers: dict, found: dict[str, int], rid: str) -> dict:
    """The response's headers, with `x-omitted-content: image=2` when any part was unseen
    (`found`: what `count` gives)."""
    if not found:
        return headers
    said = ",".join(f"{kind}={n}" for kind, n in sorted(found.items()))
    log.info("%s: %s not shown to the model (it reads text only)", rid, said)
    return headers | {"x-omitted-content": said}
