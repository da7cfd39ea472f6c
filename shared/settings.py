"""Autopack settings: the one place that reads the environment."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    """Where Autopack keeps its SQLite database, mirrors, worktrees and logs by default."""
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "autopack"


class Settings(BaseSettings):
    """Every tunable of Autopack; names are the environment variables (prefix AUTOPACK_)."""

    model_config = SettingsConfigDict(
        env_prefix="AUTOPACK_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    data_dir: Path = Field(default_factory=_default_data_dir)
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "AUTOPACK_DATABASE_URL")
    )
    broker_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("BROKER_URL", "AUTOPACK_BROKER_URL"),
    )
    queue: str = "autopack"
    # Repositories registered by configuration: {"name": "url or path"}.
    repos: dict[str, str] = Field(default_factory=dict)
    # Secrets phases may ask for by name (`secret_env`), held by workers only: {"NAME": "value"}.
    secrets: dict[str, SecretStr] = Field(default_factory=dict)
    # Bootstrap API keys given by the operator (compared by hash, never logged).
    api_keys: list[SecretStr] = Field(default_factory=list)

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    max_request_bytes: int = 1_048_576
    # Database connections the API keeps open: sized to the request thread pool (40) so a burst
    # never opens and closes overflow connections per request.
    api_db_pool_size: int = Field(default=20, ge=1, le=200)
    # A pooled PostgreSQL connection idle longer than this is pinged before use (0: always).
    db_ping_idle_s: float = Field(default=1.0, ge=0, le=3600)
    # How often a long poll (GET /runs/{id}/status?wait_s=) re-reads a run nothing woke it for.
    long_poll_recheck_s: float = Field(default=1.0, gt=0, le=60)
    # How long an API process may remember a key it verified, while it hears of every change to
    # the keys (PostgreSQL; api/keycache.py). Any change forgets them all. 0: read every time.
    api_key_cache_s: float = Field(default=10.0, ge=0, le=300)

    lease_ttl_s: float = 60.0
    heartbeat_interval_s: float = 10.0
    sweep_interval_s: float = 15.0
    # A run queued this long while its queue holds fewer messages than queued runs is re-sent.
    requeue_after_s: float = 60.0
    kill_grace_s: float = 5.0
    # How long a worker retries a write of a run's progress while the database is unreachable
    # (None: min(30, lease_ttl_s / 2), so it gives up before its lease could expire).
    db_retry_s: float | None = None
    # Resource limits of every phase process (via util-linux prlimit); None leaves the worker's own.
    phase_cpu_seconds: int | None = None
    phase_memory_mb: int | None = None
    phase_max_open_files: int | None = None
    phase_max_processes: int | None = None
    # A worker with free slots that receives nothing while its queue holds messages this long is stalled.
    worker_stall_timeout_s: float = 120.0
    max_run_duration_s: int = 24 * 3600
    output_tail_bytes: int = 8192
    max_log_bytes: int = 1_048_576
    keep_failed_worktrees: bool = False
    # Workers keep one spare checkout per repository (under DATA_DIR/spares), made after a run
    # ends, so the next run's worktree is a rename and a branch switch instead of a checkout.
    spare_worktree: bool = True
    # Finished runs' worktrees, run branches and checkpoint refs (mirror and origin) are removed this
    # long after the run ended, by the reconciler of each worker, every retention_interval_s.
    retention_s: float = 7 * 24 * 3600
    retention_interval_s: float = 300.0
    # When this host's worktrees exceed it, finished runs' worktrees go first (oldest-finished
    # first), even within retention; running runs are never touched. None: no budget. MB = 2**20 B.
    workspace_disk_budget_mb: int | None = Field(default=None, ge=1)
    # A phase that grows its run's worktree beyond this is stopped and the run fails (runs may set a
    # lower budgets.max_disk_mb). None: unlimited.
    run_disk_limit_mb: int | None = Field(default=None, ge=1)
    # Push each checkpoint to the origin (refs/autopack/checkpoints/<run_id>) so a worker on another
    # host can resume the run; needs an origin that accepts pushes from workers.
    checkpoint_push: bool = False
    env_allowlist: list[str] = Field(
        default_factory=lambda: [
            "PATH",
            "HOME",
            "LANG",
            "LC_ALL",
            "TERM",
            "USER",
            "LOGNAME",
            "SHELL",
            "TMPDIR",
            "TZ",
            "VIRTUAL_ENV",
        ]
    )
    checkpoint_excludes: list[str] = Field(
        default_factory=lambda: [
            ".venv/",
            "venv/",
            "node_modules/",
            "__pycache__/",
            "*.pyc",
            ".pytest_cache/",
            ".mypy_cache/",
            ".ruff_cache/",
        ]
    )

    # Failure hardening: pattern ids switched off for every run (runs may switch off more).
    hardening_disabled_patterns: list[str] = Field(default_factory=list)
    # Installing a module the project does not declare is refused unless a run or this allows it.
    hardening_allow_undeclared_installs: bool = False

    # The Doctor (LLM fallback). Off unless a provider is configured.
    llm_provider: Literal["openai", "anthropic"] | None = None
    llm_base_url: str | None = None  # default: the provider's public endpoint
    llm_api_key: SecretStr | None = None
    llm_timeout_s: float = 60.0
    doctor_model_cheap: str = "gpt-4o-mini"
    doctor_model_strong: str | None = None  # used from the second call on a phase, when set
    doctor_max_calls_per_phase: int = 2
    doctor_max_calls_per_run: int = 6
    doctor_context_tokens: int = 3000  # budget of the failure context sent to the Doctor
    doctor_max_output_tokens: int = 800
    # USD per million tokens, by model: {"gpt-4o-mini": [0.15, 0.6]} (prompt, completion).
    llm_prices: dict[str, tuple[float, float]] = Field(default_factory=dict)

    # Client side: where `autopack submit/status/runs` send requests.
    api_url: str = "http://127.0.0.1:8000"
    api_key: SecretStr | None = None

    # /metrics answers without a key unless this is set.
    metrics_require_key: bool = False

    flower_port: int = 5555
    flower_basic_auth: SecretStr | None = None

    log_json: bool | None = None
    log_level: str = "INFO"

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def effective_database_url(self) -> str:
        """The configured database, or SQLite in the data directory (the embedded default)."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'autopack.db'}"

    @property
    def effective_db_retry_s(self) -> float:
        """The write-retry budget: the configured one, else min(30, lease_ttl_s / 2)."""
        if self.db_retry_s is not None:
            return max(self.db_retry_s, 0.0)
        return min(30.0, self.lease_ttl_s / 2)

    @property
    def visibility_timeout_s(self) -> int:
        """Broker redelivery timeout: longer than the longest allowed run, so Redis never redelivers a live run."""
        return int(self.max_run_duration_s + 3600)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
