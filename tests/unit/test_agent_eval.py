"""The held-out evaluation's account of why a reply is not the expected call."""

from cluster.fixture.agent_eval import failure_kind

WANT = [("stop_issue", {"repo": "harbor", "title": "draft", "priority": "low"})]


def test_each_kind_of_failure_is_told_apart():
    def got(**args):
        return [("stop_issue", {**WANT[0][1], **args})]

    assert failure_kind(WANT, []) == "no call"
    assert failure_kind(WANT, WANT + WANT) == "calls"
    assert failure_kind(WANT, [("monitor_issue", WANT[0][1])]) == "wrong tool"
    assert failure_kind(WANT, [("stop_issue", {"repo": "harbor", "title": "draft"})]) == (
        "key left out"
    )
    assert failure_kind(WANT, got(label="x")) == "other keys"
    assert failure_kind(WANT, got(title="draft and priority low")) == "value ran on"
    assert failure_kind(WANT, got(title="dra")) == "value wrong"
    assert failure_kind(WANT, got(title="draft and", priority="high")) == "value wrong"
