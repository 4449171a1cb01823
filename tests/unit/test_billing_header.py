"""Claude Code's billing line leaves a system prompt; nothing else does."""

from cluster.api.billing_header import strip_billing_header

LINE = "x-anthropic-billing-header: cc_version=2.1.37.0d9; cc_entrypoint=cli; cch=fa690;"


def test_the_line_goes_wherever_it_opens_a_line():
    assert strip_billing_header(LINE) == ""
    assert strip_billing_header(LINE + "\nYou are Claude Code.") == "You are Claude Code."
    assert strip_billing_header("Intro.\n" + LINE + "\nRest.") == "Intro.\nRest."


def test_other_text_is_left_as_it_is():
    text = "Mention x-anthropic-billing-header: in passing.\n  " + LINE
    assert strip_billing_header(text) == text  # not at a line's start
    assert strip_billing_header("You are Claude Code.\n") == "You are Claude Code.\n"
