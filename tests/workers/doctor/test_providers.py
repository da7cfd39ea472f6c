"""LLM provider clients against local fakes of the OpenAI and Anthropic wire formats."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from shared.errors import Permanent, Transient
from shared.settings import Settings
from tests.fakes.llm_server import FakeLLMServer, Kind
from workers.doctor.providers import (
    ANTHROPIC_DEFAULT_BASE_URL,
    OPENAI_DEFAULT_BASE_URL,
    AnthropicProvider,
    ChatMessage,
    Completion,
    LLMProvider,
    OpenAICompatibleProvider,
    ProviderError,
    ProviderRejected,
    cost_usd,
    provider_from_settings,
)

KEY = "sk-test-S3CRET-0123456789abcdef"
MODEL = "fake-model-1"
SYSTEM = "You are the Doctor."
MESSAGES = [ChatMessage("user", "The build failed: ModuleNotFoundError: no module named 'yaml'")]


def make_settings(**values: Any) -> Settings:
    """Settings from explicit values only (no .env file)."""
    return Settings(_env_file=None, **values)


def make_provider(
    server: FakeLLMServer, key: str | None = KEY, timeout_s: float = 10
) -> LLMProvider:
    """A provider of the server's kind pointed at it."""
    if server.kind == "openai":
        return OpenAICompatibleProvider(server.base_url, key, MODEL, timeout_s=timeout_s)
    return AnthropicProvider(server.base_url, api_key=key or "", model=MODEL, timeout_s=timeout_s)


def ask(provider: LLMProvider, max_tokens: int = 100) -> Completion:
    """One completion of the standard prompt."""
    return provider.complete(SYSTEM, MESSAGES, max_tokens=max_tokens)


@pytest.fixture(params=["openai", "anthropic"])
def server(request: pytest.FixtureRequest) -> Iterator[FakeLLMServer]:
    """A fake of each provider kind, expecting KEY."""
    kind: Kind = request.param
    with FakeLLMServer(kind, expect_key=KEY) as fake:
        yield fake


@pytest.fixture
def openai_server() -> Iterator[FakeLLMServer]:
    """A fake OpenAI-compatible server expecting KEY."""
    with FakeLLMServer("openai", expect_key=KEY) as fake:
        yield fake


@pytest.fixture
def anthropic_server() -> Iterator[FakeLLMServer]:
    """A fake Anthropic server expecting KEY."""
    with FakeLLMServer("anthropic", expect_key=KEY) as fake:
        yield fake


def assert_key_hidden(*things: object) -> None:
    """Neither str nor repr of any thing contains the API key."""
    for thing in things:
        assert KEY not in str(thing)
        assert KEY not in repr(thing)


# -- success ---------------------------------------------------------------------------------


def test_complete_returns_text_and_usage_when_server_answers(server: FakeLLMServer) -> None:
    server.enqueue("Install pyyaml.", prompt_tokens=42, completion_tokens=7)

    completion = ask(make_provider(server))

    assert completion.text == "Install pyyaml."
    assert completion.provider == server.kind
    assert completion.model == MODEL
    assert (completion.prompt_tokens, completion.completion_tokens) == (42, 7)
    assert completion.total_tokens == 49
    assert completion.latency_ms >= 0
    assert completion.usage_estimated is False


def test_complete_estimates_usage_when_openai_omits_it(openai_server: FakeLLMServer) -> None:
    openai_server.enqueue("x" * 9, omit_usage=True)

    completion = ask(make_provider(openai_server))

    chars = len(SYSTEM) + sum(len(m.content) for m in MESSAGES)
    assert completion.prompt_tokens == -(-chars // 4)
    assert completion.completion_tokens == 3
    assert completion.total_tokens == completion.prompt_tokens + 3
    assert completion.usage_estimated is True


def test_complete_joins_text_blocks_when_anthropic_answers_several(
    anthropic_server: FakeLLMServer,
) -> None:
    body = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [
            {"type": "text", "text": "Install "},
            {"type": "tool_use", "id": "t1", "name": "x", "input": {}},
            {"type": "text", "text": "pyyaml."},
        ],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 4},
    }
    anthropic_server.enqueue_raw(json.dumps(body))

    completion = ask(make_provider(anthropic_server))

    assert completion.text == "Install pyyaml."
    assert completion.total_tokens == 14


def test_complete_answers_default_text_when_queue_empty(server: FakeLLMServer) -> None:
    server.default_text = "default diagnosis"
    server.enqueue("first")

    provider = make_provider(server)

    assert [ask(provider).text for _ in range(3)] == ["first", *["default diagnosis"] * 2]


def test_complete_reuses_client_when_one_is_given(openai_server: FakeLLMServer) -> None:
    with httpx.Client() as client:
        provider = OpenAICompatibleProvider(openai_server.base_url, KEY, MODEL, client=client)
        assert ask(provider).text == "OK"
        assert ask(provider).text == "OK"
    assert len(openai_server.requests) == 2


# -- request shape ---------------------------------------------------------------------------


def test_complete_sends_openai_body_and_bearer_when_key_set(
    openai_server: FakeLLMServer,
) -> None:
    ask(make_provider(openai_server), max_tokens=321)

    [request] = openai_server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["authorization"] == f"Bearer {KEY}"
    assert request["body"] == {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": MESSAGES[0].content},
        ],
        "max_tokens": 321,
        "temperature": 0.0,
    }


def test_complete_sends_no_authorization_when_openai_key_absent() -> None:
    with FakeLLMServer("openai") as fake:
        ask(make_provider(fake, key=None))

        [request] = fake.requests
    assert "authorization" not in request["headers"]


def test_complete_sends_anthropic_body_and_headers(anthropic_server: FakeLLMServer) -> None:
    history = [*MESSAGES, ChatMessage("assistant", "Try pip."), ChatMessage("user", "Still.")]

    make_provider(anthropic_server).complete(SYSTEM, history, max_tokens=55, temperature=0.2)

    [request] = anthropic_server.requests
    assert request["path"] == "/v1/messages"
    headers = request["headers"]
    assert headers["x-api-key"] == KEY
    assert headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in headers
    assert request["body"] == {
        "model": MODEL,
        "system": SYSTEM,
        "messages": [{"role": m.role, "content": m.content} for m in history],
        "max_tokens": 55,
        "temperature": 0.2,
    }


# -- errors ----------------------------------------------------------------------------------


def test_complete_raises_rejected_when_key_wrong(server: FakeLLMServer) -> None:
    provider = make_provider(server, key="sk-wrong")

    with pytest.raises(ProviderRejected) as caught:
        ask(provider)

    assert isinstance(caught.value, Permanent)
    assert caught.value.status_code == 401
    assert "401" in str(caught.value)


@pytest.mark.parametrize("status", [429, 500, 503])
def test_complete_raises_provider_error_when_server_busy_or_failing(
    server: FakeLLMServer, status: int
) -> None:
    server.enqueue("upstream trouble", status=status)

    with pytest.raises(ProviderError) as caught:
        ask(make_provider(server))

    assert isinstance(caught.value, Transient)
    assert caught.value.status_code == status
    assert str(status) in str(caught.value)
    assert "upstream trouble" in str(caught.value)


@pytest.mark.parametrize("status", [400, 404, 422])
def test_complete_raises_rejected_when_server_refuses_request(
    server: FakeLLMServer, status: int
) -> None:
    server.enqueue("bad request", status=status)

    with pytest.raises(ProviderRejected) as caught:
        ask(make_provider(server))

    assert caught.value.status_code == status


def test_complete_raises_rejected_when_path_wrong(openai_server: FakeLLMServer) -> None:
    root = openai_server.base_url.removesuffix("/v1")
    provider = OpenAICompatibleProvider(root, KEY, MODEL)

    with pytest.raises(ProviderRejected, match="404"):
        ask(provider)


def test_complete_raises_provider_error_when_server_too_slow(server: FakeLLMServer) -> None:
    server.enqueue("late", delay_s=5.0)

    with pytest.raises(ProviderError, match=r"timed out after 0\.5s"):
        ask(make_provider(server, timeout_s=0.5))


def test_complete_raises_provider_error_when_nothing_listens() -> None:
    fake = FakeLLMServer("openai").start()
    url = fake.base_url
    fake.stop()

    with pytest.raises(ProviderError, match="ConnectError"):
        ask(OpenAICompatibleProvider(url, KEY, MODEL))


def test_complete_raises_rejected_when_url_has_no_scheme() -> None:
    with pytest.raises(ProviderRejected, match="bad URL"):
        ask(OpenAICompatibleProvider("127.0.0.1:9/v1", KEY, MODEL))


@pytest.mark.parametrize(
    "body",
    [
        "this is not json",
        "[]",
        json.dumps({"id": "x", "object": "chat.completion"}),
        json.dumps({"choices": []}),
        json.dumps({"choices": [{"index": 0, "message": {"role": "assistant"}}]}),
        json.dumps({"choices": [{"message": {"content": None}}]}),
        json.dumps({"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": 1}}),
        json.dumps({"choices": [{"message": {"content": "hi"}}], "usage": "lots"}),
    ],
)
def test_complete_raises_rejected_when_openai_body_malformed(
    openai_server: FakeLLMServer, body: str
) -> None:
    openai_server.enqueue_raw(body)

    with pytest.raises(ProviderRejected, match="malformed"):
        ask(make_provider(openai_server))


@pytest.mark.parametrize(
    "body",
    [
        "<html>oops</html>",
        json.dumps({"type": "message", "usage": {"input_tokens": 1, "output_tokens": 1}}),
        json.dumps({"type": "message", "content": [{"type": "text", "text": "hi"}]}),
        json.dumps(
            {
                "content": [{"type": "text", "text": "hi"}],
                "usage": {"input_tokens": "1", "output_tokens": 1},
            }
        ),
    ],
)
def test_complete_raises_rejected_when_anthropic_body_malformed(
    anthropic_server: FakeLLMServer, body: str
) -> None:
    anthropic_server.enqueue_raw(body)

    with pytest.raises(ProviderRejected, match="malformed"):
        ask(make_provider(anthropic_server))


def test_complete_raises_rejected_when_anthropic_omits_usage(
    anthropic_server: FakeLLMServer,
) -> None:
    anthropic_server.enqueue("fine", omit_usage=True)

    with pytest.raises(ProviderRejected, match="usage"):
        ask(make_provider(anthropic_server))


# -- the key stays secret --------------------------------------------------------------------


def test_errors_and_reprs_hide_key_when_calls_fail(server: FakeLLMServer) -> None:
    provider = make_provider(server)
    server.enqueue(f"Incorrect API key provided: {KEY}", status=400)
    server.enqueue(f"overloaded for {KEY}", status=500)
    server.enqueue_raw(f"not json {KEY}")
    server.enqueue("late", delay_s=5.0)
    errors: list[Exception] = []
    for _ in range(3):
        with pytest.raises((ProviderError, ProviderRejected)) as caught:
            ask(provider)
        errors.append(caught.value)
    with pytest.raises(ProviderError) as caught:
        ask(make_provider(server, timeout_s=0.5))
    errors.append(caught.value)

    assert [type(e) for e in errors] == [
        ProviderRejected,
        ProviderError,
        ProviderRejected,
        ProviderError,
    ]
    assert "[redacted]" in str(errors[0])
    assert all(e.__cause__ is None and e.__context__ is None for e in errors)
    assert_key_hidden(provider, *errors)


def test_repr_hides_key_when_provider_built_from_settings() -> None:
    for kind in ("openai", "anthropic"):
        provider = provider_from_settings(
            make_settings(llm_provider=kind, llm_api_key=SecretStr(KEY)), MODEL
        )
        assert provider is not None
        assert "api_key=set" in repr(provider)
        assert_key_hidden(provider, vars(provider).get("base_url"))


# -- settings and pricing --------------------------------------------------------------------


def test_provider_from_settings_returns_none_when_doctor_off() -> None:
    assert provider_from_settings(make_settings(llm_provider=None), MODEL) is None


@pytest.mark.parametrize(
    ("kind", "cls", "default_url"),
    [
        ("openai", OpenAICompatibleProvider, OPENAI_DEFAULT_BASE_URL),
        ("anthropic", AnthropicProvider, ANTHROPIC_DEFAULT_BASE_URL),
    ],
)
def test_provider_from_settings_uses_default_url_when_none_configured(
    kind: str, cls: type[Any], default_url: str
) -> None:
    settings = make_settings(llm_provider=kind, llm_api_key=SecretStr(KEY), llm_timeout_s=7.5)

    provider = provider_from_settings(settings, "m-1")

    assert isinstance(provider, cls)
    assert provider.base_url == default_url
    assert provider.model == "m-1"
    assert provider.timeout_s == 7.5


def test_provider_from_settings_calls_configured_url(server: FakeLLMServer) -> None:
    server.enqueue("via settings")
    settings = make_settings(
        llm_provider=server.kind, llm_base_url=server.base_url + "/", llm_api_key=SecretStr(KEY)
    )

    provider = provider_from_settings(settings, MODEL)

    assert provider is not None
    assert ask(provider).text == "via settings"
    assert server.requests[0]["body"]["model"] == MODEL


def test_provider_from_settings_allows_no_key_when_openai_compatible() -> None:
    provider = provider_from_settings(
        make_settings(llm_provider="openai", llm_base_url="http://127.0.0.1:1/v1"), MODEL
    )

    assert isinstance(provider, OpenAICompatibleProvider)
    assert "api_key=none" in repr(provider)


def test_provider_from_settings_raises_rejected_when_anthropic_has_no_key() -> None:
    with pytest.raises(ProviderRejected, match="LLM_API_KEY"):
        provider_from_settings(make_settings(llm_provider="anthropic"), MODEL)


def test_cost_usd_prices_tokens_when_model_listed() -> None:
    settings = make_settings(llm_prices={"gpt-4o-mini": (0.15, 0.6)})

    cost = cost_usd(settings, "gpt-4o-mini", 1_000_000, 500_000)

    assert cost == pytest.approx(0.45)
    assert cost_usd(settings, "gpt-4o-mini", 0, 0) == 0.0


def test_cost_usd_returns_none_when_model_unlisted() -> None:
    settings = make_settings(llm_prices={"gpt-4o-mini": (0.15, 0.6)})

    assert cost_usd(settings, "claude-x", 10, 10) is None


# -- the fake itself -------------------------------------------------------------------------


def test_fake_answers_anthropic_error_shape_when_version_header_missing(
    anthropic_server: FakeLLMServer,
) -> None:
    response = httpx.post(
        f"{anthropic_server.base_url}/v1/messages",
        headers={"x-api-key": KEY},
        json={"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
    )

    assert response.status_code == 400
    assert response.json() == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "anthropic-version: header is required",
        },
    }


def test_fake_answers_openai_error_shape_when_key_wrong(openai_server: FakeLLMServer) -> None:
    response = httpx.post(
        f"{openai_server.base_url}/chat/completions",
        headers={"Authorization": "Bearer nope"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
    )

    assert response.status_code == 401
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "code"}
    assert error["code"] == "invalid_api_key"
    assert openai_server.pending == 0


def test_fake_wait_for_requests_returns_when_count_reached(openai_server: FakeLLMServer) -> None:
    ask(make_provider(openai_server))

    assert len(openai_server.wait_for_requests(1, timeout_s=5)) == 1
    with pytest.raises(TimeoutError):
        openai_server.wait_for_requests(2, timeout_s=0.05)
