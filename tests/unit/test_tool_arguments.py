"""A past call's arguments, as clients resend them: whole, encoded twice, or cut off by
max_tokens (this server's own replies among them) read up to the cut; another JSON type is
a 400 that names the field."""

import logging

import pytest

from cluster.api.chat import tool_arguments
from cluster.coordinator.errors import BadRequest

P = "messages.1.tool_calls.0.function.arguments"


def test_whole_and_twice_encoded_arguments():
    assert tool_arguments('{"path": "a.py"}', P) == {"path": "a.py"}
    assert tool_arguments({"path": "a.py"}, P) == {"path": "a.py"}
    assert tool_arguments('"{\\"n\\": 2}"', P) == {"n": 2}
    assert tool_arguments("", P) == tool_arguments(None, P) == {}


def test_arguments_cut_off_are_read_up_to_the_cut(caplog):
    with caplog.at_level(logging.WARNING):
        assert tool_arguments('{"path": "src/a', P) == {"path": "src/a"}
        assert tool_arguments('{"days": 3', P) == {"days": 3}
        assert tool_arguments('{"a": 1, ', P) == {"a": 1}
        assert tool_arguments('{"tags": ["x", "y', P) == {"tags": ["x", "y"]}
        assert tool_arguments('{"pa', P) == {}  # cut inside the first key: nothing to keep
    assert P in caplog.text and "cut off" in caplog.text and "not JSON" in caplog.text


def test_json_of_another_type_is_no_arguments_and_a_value_not_a_string_is_refused(caplog):
    """An agent resends its history every turn (a call another model wrote with `[]` would
    fail every later turn); `null` means none, the rest is said in the log."""
    with caplog.at_level(logging.WARNING):
        for other in ("[]", "3", '"text"', "null", "[1, 2]"):
            assert tool_arguments(other, P) == {}
    assert caplog.text.count("JSON but not an object") == 4
    with pytest.raises(BadRequest) as e:
        tool_arguments(["x"], P)
    assert e.value.param == P


def test_a_resent_cut_call_is_logged_once(caplog):
    """An agent resends its history every turn: the same cut call is said once, a new one
    again."""
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            assert tool_arguments('{"path": "once/b', P) == {"path": "once/b"}
        tool_arguments('{"path": "once/c', P)
    assert caplog.text.count("cut off") == 2
