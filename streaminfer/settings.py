"""Settings for every streaminfer process, read once at the entrypoint from ``STREAMINFER_*``.

The environment variable names are part of the external contract (SPEC §7): docker-compose
and operators use them, so the fields stay flat (``STREAMINFER_KAFKA_BOOTSTRAP_SERVERS``),
grouped below by the component that reads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streaminfer.models.builtin import default_repository  # cheap: the builders load lazily


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
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """How every Kafka client connects (``SSL`` and ``SASL_SSL`` use TLS)."""
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    """SASL mechanism; required with a ``SASL_*`` protocol."""
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    """CA bundle that signs the brokers' certificates; unset = the system's CAs."""
    kafka_ssl_certfile: Path | None = None
    """Client certificate (mutual TLS), with ``kafka_ssl_keyfile``."""
    kafka_ssl_keyfile: Path | None = None
    schema_registry_url: str | None = None
    """Confluent-compatible schema registry; unset = Avro single-object encoding."""
    schema_registry_username: str | None = None
    """Registry basic auth (credentials in the URL itself are not used)."""
    schema_registry_password: SecretStr | None = None
    schema_registry_cafile: Path | None = None
    """CA bundle for an ``https://`` registry; unset = the system's CAs."""
    schema_registry_subject_strategy: Literal["record", "topic", "topic_record"] = "record"
    """Registry subjects of our schemas: ``record`` (``<record full name>``), ``topic``
    (``<topic>-value``) or ``topic_record`` (``<topic>-<record full name>``), as Confluent's
    RecordNameStrategy, TopicNameStrategy and TopicRecordNameStrategy name them."""

    # --- Redis ---
    redis_url: SecretStr = SecretStr("redis://localhost:6379/0")
    """Redis URL (may hold a password, hence secret); ``rediss://user:password@host:port/db`` for
    TLS and ACL auth."""
    redis_ssl_cafile: Path | None = None
    """CA bundle for ``rediss://`` URLs; unset = the system's CAs."""
    result_ttl_s: int = Field(24 * 3600, ge=1)
    """How long results (and the status of requests) are kept in Redis."""
    content_cache_scope: Literal["client", "shared"] = "client"
    """Whose content-cache entries a request may be answered from: its own client's, or any
    client's (``shared``: identical inputs from anyone; a hit then tells a client that someone
    sent them)."""

    # --- feature lookup ---
    feature_store_url: SecretStr | None = None
    """SQLAlchemy URL of the database every feature lookup task reads instead of its model.yaml's
    ``features.url`` (docs/features.md); may hold a password, hence secret."""

    # --- models ---
    model_repository: Path = Field(default_factory=default_repository)
    """Model repository: ``<repo>/<model>/model.yaml`` and ``<repo>/<model>/<version>/``. Default:
    ``model_repository/`` in a source checkout, else the per-user data directory
    (``~/.local/share/streaminfer/model_repository`` on Linux)."""
    tasks: str | None = None
    """Comma-separated tasks to serve (gateway and worker); unset = every built task."""
    device: str = "auto"
    """Where models run: ``auto`` (CUDA when present), ``cpu`` or ``cuda``."""

    # --- gateway ---
    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(8000, ge=0, le=65535)
    gateway_ssl_certfile: Path | None = None
    """Certificate chain: with ``gateway_ssl_keyfile`` the gateway serves HTTPS."""
    gateway_ssl_keyfile: Path | None = None
    auth: str | None = None
    """``jwt``, ``apikey``, ``jwt,apikey`` or ``disabled``; unset = the gateway refuses to start."""
    allow_insecure_bind: bool = False
    """With ``auth=disabled`` the gateway binds only to a loopback address unless this is true."""
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
    circuit_failures: int = Field(5, ge=1)
    """Failures in a row of a dependency (Redis, Kafka, schema registry, feature store) or a
    model after which its circuit breaker opens: requests needing it fail fast (gateway: 503
    with Retry-After; worker: its task's partitions pause)."""
    circuit_reset_s: float = Field(5.0, gt=0, le=3600)
    """Seconds an open circuit breaker waits before letting a probe through (half-open)."""
    max_wait_s: float = Field(60.0, gt=0)
    """Upper bound on ``?wait=S`` and ``Prefer: wait=S``."""
    default_deadline_ms: int | None = Field(None, ge=1, le=366 * 24 * 3600 * 1000)
    """Deadline of a request through the gateway that sets none and whose task's ``model.yaml``
    sets no ``default_deadline_ms``; unset = none."""

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
    worker_scheduling: Literal["deadline", "fifo"] = "deadline"
    """``deadline``: earliest deadline first within a priority, batches cut to meet deadlines,
    unreachable requests shed early. ``fifo``: arrival order, deadlines checked only as a batch
    starts (the baseline of ``bench --scenario deadlines``)."""

    @field_validator("auth")
    @classmethod
    def _check_auth(cls, value: str | None) -> str | None:
        if value is None:
            return None
        modes = {m.strip() for m in value.split(",") if m.strip()}
        allowed = {"jwt", "apikey", "disabled"}
        if not modes or modes - allowed or ("disabled" in modes and len(modes) > 1):
            raise ValueError(
                f"STREAMINFER_AUTH must be jwt, apikey, jwt,apikey or disabled, not {value!r}"
            )
        return ",".join(sorted(modes))

    @model_validator(mode="after")
    def _check_connectivity(self) -> Settings:
        problems = connectivity_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def kafka_uses_tls(self) -> bool:
        return self.kafka_security_protocol in ("SSL", "SASL_SSL")

    @property
    def gateway_uses_tls(self) -> bool:
        return self.gateway_ssl_certfile is not None

    @property
    def task_list(self) -> list[str] | None:
        return [t.strip() for t in self.tasks.split(",") if t.strip()] if self.tasks else None

    @property
    def group_id(self) -> str:
        return self.worker_group_id or f"{self.topic_prefix}-workers"

    @property
    def redis_dsn(self) -> str:
        """The URL every Redis client is made from; for ``rediss://`` it carries the CA bundle
        (redis-py reads ``ssl_ca_certs`` from the query), so one place decides it for all."""
        url = self.redis_url.get_secret_value()
        if (
            self.redis_ssl_cafile is None
            or not url.startswith("rediss://")
            or "ssl_ca_certs=" in url
        ):
            return url
        sep = "&" if "?" in url else "?"
        return f"{url}{sep}ssl_ca_certs={quote(str(self.redis_ssl_cafile), safe='/')}"

    def summary(self) -> dict:
        """What ``/info`` and ``config show`` print: no secrets (passwords, also those inside
        URLs, become ``***``; a password that is set shows as ``***``, unset as null)."""
        data = self.model_dump(mode="json", exclude={"jwt_public_keys", *SECRET_FIELDS})
        for name in SECRET_FIELDS:
            data[name] = None if getattr(self, name) is None else REDACTED
        data["redis_url"] = redact_url(self.redis_url.get_secret_value())
        data["schema_registry_url"] = redact_url(self.schema_registry_url)
        if self.feature_store_url is not None:
            data["feature_store_url"] = redact_url(self.feature_store_url.get_secret_value())
        return data  # jwt_public_keys left out: PEM text, not a summary


REDACTED = "***"
SECRET_FIELDS = (
    "redis_url",
    "kafka_sasl_password",
    "schema_registry_password",
    "feature_store_url",
)


def redact_url(url: str | None) -> str | None:
    """``scheme://user:***@host/...``: the password of a URL hidden, the rest kept."""
    if not url or "@" not in url:
        return url
    parts = urlsplit(url)
    userinfo, _, host = parts.netloc.rpartition("@")
    user, has_password, _ = userinfo.partition(":")
    netloc = f"{user}:{REDACTED}@{host}" if has_password else f"{REDACTED}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def connectivity_problems(settings: Settings) -> list[str]:
    """Combinations of the connectivity settings that cannot work, each naming its setting."""
    problems = []
    sasl = settings.kafka_security_protocol.startswith("SASL_")
    if sasl and settings.kafka_sasl_mechanism is None:
        problems.append(
            f"STREAMINFER_KAFKA_SASL_MECHANISM is required with "
            f"STREAMINFER_KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol}"
        )
    if sasl and not settings.kafka_sasl_username:
        problems.append(
            f"STREAMINFER_KAFKA_SASL_USERNAME is required with "
            f"STREAMINFER_KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol}"
        )
    if sasl and settings.kafka_sasl_password is None:
        problems.append(
            f"STREAMINFER_KAFKA_SASL_PASSWORD is required with "
            f"STREAMINFER_KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol}"
        )
    if not sasl and (settings.kafka_sasl_mechanism or settings.kafka_sasl_username):
        problems.append(
            f"STREAMINFER_KAFKA_SASL_MECHANISM/USERNAME need STREAMINFER_KAFKA_SECURITY_PROTOCOL "
            f"SASL_PLAINTEXT or SASL_SSL, not {settings.kafka_security_protocol}"
        )
    tls_files = (settings.kafka_ssl_cafile, settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile)
    if not settings.kafka_uses_tls and any(f is not None for f in tls_files):
        problems.append(
            f"STREAMINFER_KAFKA_SSL_* files need STREAMINFER_KAFKA_SECURITY_PROTOCOL SSL or "
            f"SASL_SSL, not {settings.kafka_security_protocol}"
        )
    for prefix in ("KAFKA", "GATEWAY"):
        cert = getattr(settings, f"{prefix.lower()}_ssl_certfile")
        key = getattr(settings, f"{prefix.lower()}_ssl_keyfile")
        if (cert is None) != (key is None):
            given, missing = ("CERTFILE", "KEYFILE") if key is None else ("KEYFILE", "CERTFILE")
            problems.append(
                f"STREAMINFER_{prefix}_SSL_{missing} is required with STREAMINFER_{prefix}_SSL_{given}"
            )
    if (
        settings.redis_ssl_cafile is not None
        and not settings.redis_url.get_secret_value().startswith("rediss://")
    ):
        problems.append("STREAMINFER_REDIS_SSL_CAFILE needs a rediss:// STREAMINFER_REDIS_URL")
    if (settings.schema_registry_username is None) != (settings.schema_registry_password is None):
        problems.append(
            "STREAMINFER_SCHEMA_REGISTRY_USERNAME and STREAMINFER_SCHEMA_REGISTRY_PASSWORD go together"
        )
    for name in (
        "kafka_ssl_cafile",
        "kafka_ssl_certfile",
        "kafka_ssl_keyfile",
        "redis_ssl_cafile",
        "gateway_ssl_certfile",
        "gateway_ssl_keyfile",
        "schema_registry_cafile",
    ):
        path = getattr(settings, name)
        if path is not None and not path.is_file():
            problems.append(f"STREAMINFER_{name.upper()}: no such file {str(path)!r}")
    return problems
