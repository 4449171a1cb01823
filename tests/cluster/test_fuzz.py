"""Property-based fuzzing of the API: no body, however odd, gets a 5xx or kills the server."""

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
anything = st.recursive(
    scalars,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=12,
)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool", "robot", ""])},
    optional={"content": st.one_of(st.text(max_size=40), anything)},
)
fields = {
    "model": st.one_of(st.just("glm-5-fixture"), anything),
    "max_tokens": st.one_of(st.integers(min_value=-5, max_value=8), anything),
    "max_completion_tokens": st.one_of(st.integers(min_value=1, max_value=6), anything),
    "temperature": st.one_of(st.floats(min_value=-1, max_value=3), anything),
    "top_p": anything,
    "top_k": st.one_of(st.integers(min_value=-3, max_value=50), anything),
    "seed": anything,
    "stop": st.one_of(st.text(max_size=5), st.lists(st.text(max_size=5), max_size=20), anything),
    "stream": st.booleans(),
    "n": st.one_of(st.integers(min_value=0, max_value=3), anything),
    "logprobs": anything,
    "stop_token_ids": st.one_of(
        st.lists(st.integers(min_value=-3, max_value=10**6), max_size=3), anything
    ),
}
chat_body = st.fixed_dictionaries(
    {"messages": st.one_of(st.lists(message, max_size=3), anything)}, optional=fields
)
completion_body = st.fixed_dictionaries(
    {
        "prompt": st.one_of(
            st.text(max_size=40),
            st.lists(st.integers(min_value=-10, max_value=10**7), max_size=6),
            st.lists(st.text(max_size=5), max_size=3),
            anything,
        )
    },
    optional=fields,
)


def _bounded(body: dict, key: str, default) -> None:
    """A length the server would accept but that is long (or none: up to the context) becomes
    short: a streamed reply of thousands of tokens never trips the client's read timeout."""
    value = body.get(key, default)
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool)
                         and value > 8):  # fmt: skip
        body[key] = 8


def _check(url: str, body) -> None:
    r = httpx.post(url, json=body, timeout=60)
    assert r.status_code < 500, (body, r.status_code, r.text[:300])
    if r.status_code >= 400:
        error = r.json()["error"]
        assert error["message"] and error["type"]
    elif body.get("stream") is True:
        assert r.text.rstrip().endswith("data: [DONE]")


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=chat_body)
def test_chat_fuzz(server, body):
    _bounded(body, "max_tokens", None)
    if "max_completion_tokens" in body and body["max_completion_tokens"] is not None:
        _bounded(body, "max_completion_tokens", None)
    _check(f"{server.url}/v1/chat/completions", body)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=completion_body)
def test_completion_fuzz(server, body):
    _bounded(body, "max_tokens", 16)
    _check(f"{server.url}/v1/completions", body)


def test_server_survived_the_fuzzing(server):
    assert httpx.get(f"{server.url}/health").status_code == 200
