"""Claude Code's billing line: from version 2.1.36 its system prompt opens with
`x-anthropic-billing-header: cc_version=...; cc_entrypoint=cli; cch=<5 hex>;`, and `cch`
changes on every request. Left in, a session's prompts differ a few dozen tokens in and no
turn reuses the cached prefix of the last (a 100K-token transcript prefilled again each turn).
It tells the model nothing: system prompts lose the line before templating (OpenAI's too, for
proxies that translate Claude Code's requests)."""

import re

LINE = re.compile(r"^x-anthropic-billing-header:[^\n]*(?:\n|$)", re.MULTILINE)


def strip_billing_header(text: str) -> str:
    """`text` without Claude Code's billing lines (unchanged when it has none)."""
    if "x-anthropic-billing-header:" not in text:
        return text
    return LINE.sub("", text)
