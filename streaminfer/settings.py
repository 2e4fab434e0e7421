"""Settings for every streaminfer process, read once at the entrypoint from ``STREAMINFER_*``.

The environment variable names are part of the external contract (SPEC §7): docker-compose
and operators use them, so the fields stay flat (``STREAMINFER_KAFKA_BOOTSTRAP_SERVERS``),
grouped below by the component that reads them.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# NOTE: not models.builtin.default_repository: importing that pulls in the model builders,
# and the gateway process must stay free of torch.
BUILTIN_REPOSITORY = Path(__file__).resolve().parents[1] / "model_repository"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAMINFER_", frozen=True, extra="ignore")

    # --- Kafka ---
    kafka_bootstrap_servers: str = "localhost:9092"
    """Comma-separated ``host:port`` list of brokers."""
    kafka_fetch_max_wait_ms: int = Field(20, ge=0)
    """Longest a fetch may wait on the broker for data. Apache Kafka answers as soon as data
    arrives; Tansu holds the fetch, so there the wait is added latency, while a short wait is a busy
    poll (measured idle, one worker: 10 ms costs 21 % + 12 % of a core in broker + worker, 20 ms
    14 % + 8 %, 100 ms 5 % + 2 %)."""
    kafka_fetch_max_wait_busy_ms: int = Field(100, ge=0)
    """The workers' fetch wait while a model has a full round of batches queued: requests
    fetched a little later wait no longer then, and fewer, fuller fetches leave the model more CPU."""
    kafka_linger_ms: int = Field(2, ge=0)
    """Producer linger: how long a send may wait to share a request with others."""
    kafka_request_timeout_ms: int = Field(10_000, ge=100)
    """How long a produce may take before the gateway answers 503."""
    topic_prefix: str = "streaminfer"
    """Prefix of every topic name."""
    topic_partitions: int = Field(6, ge=1)
    """Partitions of the topics created at start-up."""
    topic_replication: int = Field(1, ge=1)
    """Replication factor of the topics created at start-up."""
    schema_registry_url: str | None = None
    """Confluent-compatible schema registry; unset = Avro single-object encoding."""

    # --- Redis ---
    redis_url: SecretStr = SecretStr("redis://localhost:6379/0")
    """Redis URL (may hold a password, hence secret)."""
    result_ttl_s: int = Field(24 * 3600, ge=1)
    """How long results (and the status of requests) are kept in Redis."""

    # --- models ---
    model_repository: Path = BUILTIN_REPOSITORY
    """Model repository: ``<repo>/<model>/model.yaml`` and ``<repo>/<model>/<version>/``."""
    tasks: str | None = None
    """Comma-separated tasks to serve (gateway and worker); unset = every built task."""
    device: str = "auto"
    """Where models run: ``auto`` (CUDA when present), ``cpu`` or ``cuda``."""

    # --- gateway ---
    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(8000, ge=0, le=65535)
    auth: str | None = None
    """``jwt``, ``apikey``, ``jwt,apikey`` or ``disabled``; unset = the gateway refuses to start."""
    jwt_public_keys: str | None = None
    jwt_algorithms: str = "ES256,RS256"
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    rate_limit_per_s: float = Field(100.0, gt=0)
    rate_limit_burst: int = Field(200, ge=1)
    max_body_bytes: int = Field(1_048_576, ge=1024)
    max_text_chars: int = Field(20_000, ge=1)
    """Longest text item accepted (413 beyond)."""
    max_image_bytes: int = Field(512 * 1024, ge=1)
    """Largest image accepted, decoded (413 beyond); its pixel count is bounded by the model too."""
    max_parameters: int = Field(32, ge=0)
    """Most entries in ``parameters`` (422 beyond)."""
    max_lag_per_task: int = Field(10_000, ge=0)
    """Consumer lag (requests not yet done) past which the gateway answers 429 OVERLOADED; 0 = no bound."""
    max_wait_s: float = Field(60.0, gt=0)
    """Upper bound on ``?wait=S`` and ``Prefer: wait=S``."""

    # --- worker ---
    worker_metrics_host: str = "127.0.0.1"
    """Bind address of the worker's /metrics (0.0.0.0 in containers, so Prometheus can scrape it)."""
    worker_metrics_port: int = Field(9100, ge=0, le=65535)
    worker_group_id: str | None = None
    """Consumer group of the workers; default ``<topic_prefix>-workers``."""
    worker_commit_interval_s: float = Field(0.5, gt=0)
    """How often acknowledged offsets are committed."""
    worker_queue_items: int = Field(1024, ge=1)
    """Per priority, how many requests a model's batcher holds before agents wait."""
    worker_model_poll_s: float = Field(2.0, ge=0)
    """How often workers and gateways look for new model versions (hot reload); 0 = never."""
    worker_threads: int | None = None
    """Intra-op threads per model instance; default: the cores divided among its instances (max 4)."""

    @field_validator("auth")
    @classmethod
    def _check_auth(cls, value: str | None) -> str | None:
        if value is None:
            return None
        modes = {m.strip() for m in value.split(",") if m.strip()}
        allowed = {"jwt", "apikey", "disabled"}
        if not modes or modes - allowed or ("disabled" in modes and len(modes) > 1):
            raise ValueError(f"STREAMINFER_AUTH must be jwt, apikey, jwt,apikey or disabled, not {value!r}")
        return ",".join(sorted(modes))

    @property
    def task_list(self) -> list[str] | None:
        return [t.strip() for t in self.tasks.split(",") if t.strip()] if self.tasks else None

    @property
    def group_id(self) -> str:
        return self.worker_group_id or f"{self.topic_prefix}-workers"

    @property
    def redis_dsn(self) -> str:
        return self.redis_url.get_secret_value()

    @property
    def auth_disabled(self) -> bool:
        return self.auth == "disabled"

    def summary(self) -> dict:
        """What ``/info`` and ``config show`` print: no secrets."""
        data = self.model_dump(mode="json", exclude={"redis_url", "jwt_public_keys"})
        data["redis_url"] = _redact_url(self.redis_dsn)
        return data


def _redact_url(url: str) -> str:
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}"
