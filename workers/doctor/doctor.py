"""The Doctor: asks an LLM what to do about a failure no pattern explained, within budgets."""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from shared.intention import IntentionAnchor, render_intention_context
from shared.settings import Settings
from workers.doctor.providers import ChatMessage, Completion, provider_from_settings

logger = logging.getLogger(__name__)

ActionName = Literal["retry", "retry_with_command", "retry_with_patch", "give_up"]
ACTIONS: tuple[str, ...] = ("retry", "retry_with_command", "retry_with_patch", "give_up")
INTENTION_BUDGET_CHARS = 1024

SYSTEM_PROMPT = """You are the Doctor of Autopack, which runs build/test/fix phases in a git worktree.
A phase failed and no deterministic mitigation explained it. Decide the single next step.
Answer with ONE JSON object and nothing else:
{"action": "retry" | "retry_with_command" | "retry_with_patch" | "give_up",
 "command": "<shell command replacing the failing one, for retry_with_command>",
 "patch": "<unified diff (git format, paths relative to the worktree), for retry_with_patch>",
 "reason": "<one sentence>"}
Use retry only for failures that look transient. Stay inside the phase's scope and the intention.
Give up when the failure needs a human decision."""


def estimate_tokens(text: str) -> int:
    """A provider-independent token estimate (about four characters a token)."""
    return math.ceil(len(text) / 4)


@dataclass(frozen=True)
class DoctorAction:
    """The Doctor's decision, validated."""

    action: ActionName
    reason: str
    command: str | None = None
    patch: str | None = None


@dataclass(frozen=True)
class DoctorContext:
    """The bounded prompt and how it was budgeted (recorded in token_efficiency_metrics)."""

    prompt: str
    intention_chars: int
    intention_source: str
    budget_tokens: int
    used_tokens: int
    output_tokens_full: int
    output_tokens_kept: int

    @property
    def substitutions(self) -> int:
        """1 when the full output was replaced by its tail."""
        return int(self.output_tokens_kept < self.output_tokens_full)


def build_context(
    *,
    goal: str,
    intention: dict[str, Any] | None,
    phase_id: str,
    phase_name: str | None,
    scope: list[str],
    commands: list[str],
    failure_class: str,
    failure_message: str,
    output: str,
    budget_tokens: int,
) -> DoctorContext:
    """Intention (≤ 1 KB), the phase and its failing command, then as much output tail as fits."""
    rendered = render_intention_context(
        goal, IntentionAnchor.from_mapping(intention), max_chars=INTENTION_BUDGET_CHARS
    )
    head = "\n".join(
        [
            "## Intention",
            rendered.text,
            "## Phase",
            f"id: {phase_id}" + (f" ({phase_name})" if phase_name else ""),
            f"scope: {', '.join(scope) if scope else '(any file)'}",
            "commands:",
            *[f"  {c}" for c in commands],
            f"## Failure ({failure_class})",
            failure_message,
            "## Output tail",
        ]
    )
    room_chars = max(budget_tokens * 4 - len(head) - 1, 200)
    tail = output[-room_chars:]
    if len(tail) < len(output):
        # Start at a line boundary so the model does not see half a line.
        newline = tail.find("\n")
        tail = tail[newline + 1 :] if 0 <= newline < 200 else tail
    prompt = f"{head}\n{tail}"
    return DoctorContext(
        prompt=prompt,
        intention_chars=rendered.chars,
        intention_source=rendered.source,
        budget_tokens=budget_tokens,
        used_tokens=estimate_tokens(prompt),
        output_tokens_full=estimate_tokens(output),
        output_tokens_kept=estimate_tokens(tail),
    )


_JSON_OBJECT = re.compile(r"\{.*\}", re.S)


def parse_action(text: str) -> DoctorAction:
    """The first JSON object of the answer as an action; ValueError when it is not one."""
    match = _JSON_OBJECT.search(text)
    if match is None:
        raise ValueError("the Doctor's answer holds no JSON object")
    try:
        data = json.loads(match.group(0))
    except json.JSONDecodeError as error:
        raise ValueError(f"the Doctor's answer is not valid JSON: {error.msg}") from error
    action = data.get("action") if isinstance(data, dict) else None
    if action not in ACTIONS:
        raise ValueError(f"unknown Doctor action {action!r}")
    reason = str(data.get("reason") or "")[:500]
    command = data.get("command")
    patch = data.get("patch")
    if action == "retry_with_command" and not (isinstance(command, str) and command.strip()):
        raise ValueError("retry_with_command without a command")
    if action == "retry_with_patch" and not (isinstance(patch, str) and patch.strip()):
        raise ValueError("retry_with_patch without a patch")
    return DoctorAction(
        action=action,
        reason=reason,
        command=command if action == "retry_with_command" else None,
        patch=patch if action == "retry_with_patch" else None,
    )


@dataclass(frozen=True)
class Consultation:
    """One call to the Doctor: the provider's completion (or error) and the parsed action."""

    tier: Literal["cheap", "strong"]
    provider: str
    model: str
    completion: Completion | None
    action: DoctorAction | None
    error: str | None


class Doctor:
    """Chooses the model tier and asks the configured provider."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def available(self) -> bool:
        """Whether a provider is configured at all."""
        return self.settings.llm_provider is not None

    def models(self, overrides: dict[str, Any] | None = None) -> tuple[str, str | None]:
        """The (cheap, strong) model mapping: the run's overrides, else the settings."""
        overrides = overrides or {}
        return (
            overrides.get("model_cheap") or self.settings.doctor_model_cheap,
            overrides.get("model_strong") or self.settings.doctor_model_strong,
        )

    def tier_for(
        self, calls_on_phase: int, overrides: dict[str, Any] | None = None
    ) -> Literal["cheap", "strong"]:
        """The cheap model first; the strong one (when configured) for later calls on the same phase."""
        return "strong" if calls_on_phase >= 1 and self.models(overrides)[1] else "cheap"

    def consult(
        self, context: DoctorContext, calls_on_phase: int, overrides: dict[str, Any] | None = None
    ) -> Consultation:
        """Ask once; provider errors and unusable answers come back as `error`, never raised."""
        tier = self.tier_for(calls_on_phase, overrides)
        cheap, strong = self.models(overrides)
        provider = provider_from_settings(
            self.settings, strong if tier == "strong" and strong else cheap
        )
        if provider is None:
            return Consultation(tier, "none", "", None, None, "no LLM provider configured")
        try:
            completion = provider.complete(
                SYSTEM_PROMPT,
                [ChatMessage("user", context.prompt)],
                max_tokens=self.settings.doctor_max_output_tokens,
            )
        except Exception as error:  # the Doctor is advice: its failure must not fail the run
            logger.warning("Doctor call failed: %s", error)
            return Consultation(tier, provider.name, provider.model, None, None, str(error)[:500])
        try:
            action = parse_action(completion.text)
        except ValueError as error:
            return Consultation(tier, provider.name, provider.model, completion, None, str(error))
        return Consultation(tier, provider.name, provider.model, completion, action, None)
