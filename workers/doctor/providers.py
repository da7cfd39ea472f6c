"""LLM provider clients for the Doctor: OpenAI-compatible and Anthropic chat APIs over httpx."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeGuard

import httpx

from shared.errors import Permanent, Transient
from shared.settings import Settings

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
ANTHROPIC_DEFAULT_BASE_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"

_EXCERPT_CHARS = 300
_REDACTED = "[redacted]"


@dataclass(frozen=True)
class ChatMessage:
    """One turn of the conversation sent to a model (the system prompt travels separately)."""

    role: Literal["user", "assistant"]
    content: str


@dataclass(frozen=True)
class Completion:
    """A model's answer with its token usage and how long the call took."""

    text: str
    provider: str
    model: str  # the model asked for (the key of settings.llm_prices), not the served snapshot
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    latency_ms: int
    usage_estimated: bool = False  # True when the server reported no usage and we estimated it


class ProviderError(Transient):
    """The provider could not answer now (timeout, connection error, 408/429/5xx); a retry may work."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class ProviderRejected(Permanent):
    """The provider refused the request (other 4xx) or answered something we cannot read."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class LLMProvider(Protocol):
    """What the Doctor needs from a model provider: one synchronous chat completion."""

    name: str
    model: str

    def complete(
        self,
        system: str,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float = 0.0,
    ) -> Completion:
        """Ask the model for one answer; raises ProviderError or ProviderRejected."""
        ...


def estimate_tokens(text: str) -> int:
    """A rough token count for text: ceil(chars / 4)."""
    return math.ceil(len(text) / 4)


def _redact(text: str, secret: str | None) -> str:
    """Text with every occurrence of the secret replaced."""
    return text.replace(secret, _REDACTED) if secret else text


def _excerpt(response: httpx.Response) -> str:
    """A short, single-line excerpt of an error response: the provider's message when it has one."""
    body = response.text
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            kind = error.get("type") or error.get("code")
            body = f"{kind}: {error['message']}" if isinstance(kind, str) else error["message"]
    flat = " ".join(body.split())
    return flat if len(flat) <= _EXCERPT_CHARS else flat[:_EXCERPT_CHARS] + "..."


def _json_or_none(response: httpx.Response) -> Any:
    """The decoded JSON body, or None when it is not JSON."""
    try:
        return response.json()
    except ValueError:
        return None


def _is_count(value: object) -> TypeGuard[int]:
    """Whether value is a non-negative integer token count."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class _HTTPProvider:
    """The HTTP plumbing both providers share: one POST, errors classified, key kept out of sight."""

    name: str

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        model: str,
        timeout_s: float,
        client: httpx.Client | None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout_s = timeout_s
        self._api_key = api_key or None
        self._client = client

    def __repr__(self) -> str:
        key = "set" if self._api_key else "none"
        return (
            f"{type(self).__name__}(base_url={self.base_url!r}, model={self.model!r}, "
            f"timeout_s={self.timeout_s}, api_key={key})"
        )

    def _post(
        self, url: str, headers: Mapping[str, str], body: Mapping[str, Any]
    ) -> tuple[dict[str, Any], int]:
        """POST body as JSON; the decoded JSON object and the latency in ms, or a classified error."""
        started = time.monotonic()
        outcome = self._send(url, headers, body)
        # Raised here, outside any except block: the httpx exception holds the request, and so
        # the key, and must not ride along as __cause__ or __context__.
        if not isinstance(outcome, httpx.Response):
            raise outcome
        latency_ms = int((time.monotonic() - started) * 1000)

        status = outcome.status_code
        if status >= 300:
            what = f"{self.name}: {url} answered HTTP {status}: " + _redact(
                _excerpt(outcome), self._api_key
            )
            if status in (408, 429) or status >= 500:
                raise ProviderError(what, status_code=status)
            raise ProviderRejected(what, status_code=status)
        data = _json_or_none(outcome)
        if not isinstance(data, dict):
            raise ProviderRejected(
                f"{self.name}: malformed response from {url}: not a JSON object: "
                + _redact(_excerpt(outcome), self._api_key),
                status_code=status,
            )
        return data, latency_ms

    def _send(
        self, url: str, headers: Mapping[str, str], body: Mapping[str, Any]
    ) -> httpx.Response | ProviderError | ProviderRejected:
        """One request with this provider's timeout: the response, or the error to raise."""
        try:
            if self._client is not None:
                return self._client.post(
                    url, json=body, headers=dict(headers), timeout=self.timeout_s
                )
            with httpx.Client() as client:
                return client.post(url, json=body, headers=dict(headers), timeout=self.timeout_s)
        except httpx.TimeoutException as exc:
            return ProviderError(
                f"{self.name}: request to {url} timed out after {self.timeout_s:g}s "
                f"({type(exc).__name__})"
            )
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            return ProviderRejected(
                f"{self.name}: bad URL {url}: {_redact(str(exc), self._api_key)}"
            )
        except httpx.HTTPError as exc:
            return ProviderError(
                f"{self.name}: request to {url} failed: {type(exc).__name__}: "
                f"{_redact(str(exc), self._api_key)}"
            )

    def _malformed(self, what: str) -> ProviderRejected:
        """The error for a 2xx response missing something we need."""
        return ProviderRejected(f"{self.name}: malformed response from {self.base_url}: {what}")


class OpenAICompatibleProvider(_HTTPProvider):
    """Chat completions on OpenAI or any server speaking its API (vLLM, llama.cpp, Ollama)."""

    name = "openai"

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        model: str,
        timeout_s: float = 60,
        client: httpx.Client | None = None,
    ) -> None:
        super().__init__(base_url, api_key, model, timeout_s, client)

    def complete(
        self,
        system: str,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float = 0.0,
    ) -> Completion:
        """Ask for one chat completion.

        When the server omits `usage` (some local servers do), tokens are estimated as
        ceil(chars / 4) of the prompt texts and of the answer, and `usage_estimated` is set.
        """
        wire: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
        wire += [{"role": m.role, "content": m.content} for m in messages]
        body = {
            "model": self.model,
            "messages": wire,
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        data, latency_ms = self._post(f"{self.base_url}/chat/completions", headers, body)

        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise self._malformed("no choices")
        message = choices[0].get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise self._malformed("no choices[0].message.content")

        usage = data.get("usage")
        if usage is None:
            guessed_prompt = estimate_tokens(system + "".join(m.content for m in messages))
            guessed_completion = estimate_tokens(content)
            return Completion(
                text=content,
                provider=self.name,
                model=self.model,
                prompt_tokens=guessed_prompt,
                completion_tokens=guessed_completion,
                total_tokens=guessed_prompt + guessed_completion,
                latency_ms=latency_ms,
                usage_estimated=True,
            )
        if not isinstance(usage, dict):
            raise self._malformed("usage is not an object")
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if not _is_count(prompt) or not _is_count(completion):
            raise self._malformed("usage without prompt_tokens/completion_tokens")
        total = usage.get("total_tokens")
        return Completion(
            text=content,
            provider=self.name,
            model=self.model,
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=total if _is_count(total) else prompt + completion,
            latency_ms=latency_ms,
        )


class AnthropicProvider(_HTTPProvider):
    """Anthropic's Messages API."""

    name = "anthropic"

    def __init__(
        self,
        base_url: str = ANTHROPIC_DEFAULT_BASE_URL,
        *,
        api_key: str,
        model: str,
        timeout_s: float = 60,
        client: httpx.Client | None = None,
    ) -> None:
        super().__init__(base_url, api_key, model, timeout_s, client)

    def complete(
        self,
        system: str,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float = 0.0,
    ) -> Completion:
        """Ask for one message; prompt tokens include cache-creation and cache-read tokens if reported."""
        body: dict[str, Any] = {"model": self.model}
        if system:
            body["system"] = system
        body["messages"] = [{"role": m.role, "content": m.content} for m in messages]
        body["max_tokens"] = max_tokens
        body["temperature"] = temperature
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        if self._api_key:
            headers["x-api-key"] = self._api_key
        data, latency_ms = self._post(f"{self.base_url}/v1/messages", headers, body)

        content = data.get("content")
        if not isinstance(content, list):
            raise self._malformed("no content")
        text = "".join(
            block["text"]
            for block in content
            if isinstance(block, dict)
            and block.get("type") == "text"
            and isinstance(block.get("text"), str)
        )
        usage = data.get("usage")
        if not isinstance(usage, dict):
            raise self._malformed("no usage")
        prompt, completion = usage.get("input_tokens"), usage.get("output_tokens")
        if not _is_count(prompt) or not _is_count(completion):
            raise self._malformed("usage without input_tokens/output_tokens")
        for cached in ("cache_creation_input_tokens", "cache_read_input_tokens"):
            extra = usage.get(cached)
            if _is_count(extra):
                prompt += extra
        return Completion(
            text=text,
            provider=self.name,
            model=self.model,
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            latency_ms=latency_ms,
        )


def provider_from_settings(settings: Settings, model: str) -> LLMProvider | None:
    """The configured provider for model, or None when the Doctor is off (no llm_provider)."""
    if settings.llm_provider is None:
        return None
    key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
    if settings.llm_provider == "openai":
        return OpenAICompatibleProvider(
            settings.llm_base_url or OPENAI_DEFAULT_BASE_URL,
            key,
            model,
            timeout_s=settings.llm_timeout_s,
        )
    if not key:
        raise ProviderRejected("anthropic: AUTOPACK_LLM_API_KEY is required")
    return AnthropicProvider(
        settings.llm_base_url or ANTHROPIC_DEFAULT_BASE_URL,
        api_key=key,
        model=model,
        timeout_s=settings.llm_timeout_s,
    )


def cost_usd(
    settings: Settings, model: str, prompt_tokens: int, completion_tokens: int
) -> float | None:
    """The price of a call from settings.llm_prices (USD per million tokens), None if unpriced."""
    prices = settings.llm_prices.get(model)
    if prices is None:
        return None
    prompt_price, completion_price = prices
    return (prompt_tokens * prompt_price + completion_tokens * completion_price) / 1_000_000
