"""The one place that turns the connectivity settings into client options: aiokafka keyword
arguments, faust's ``broker_credentials``, the schema registry's httpx client, uvicorn's TLS
arguments; and the check that explains a TLS failure by the setting to fix.

Errors::

    ConnectivityError      a setting does not match the server (wrong CA, no client certificate)
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Iterable
from typing import Any

from .settings import Settings

logger = logging.getLogger(__name__)


class ConnectivityError(RuntimeError):
    """A connection that cannot succeed with these settings; the message names the setting."""

    retriable = False


def kafka_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of every Kafka client (``None`` for PLAINTEXT and SASL_PLAINTEXT)."""
    if not settings.kafka_uses_tls:
        return None
    from aiokafka.helpers import create_ssl_context

    return create_ssl_context(
        cafile=_str(settings.kafka_ssl_cafile),
        certfile=_str(settings.kafka_ssl_certfile),
        keyfile=_str(settings.kafka_ssl_keyfile),
    )


def kafka_options(settings: Settings, ssl_context: ssl.SSLContext | None = None) -> dict[str, Any]:
    """Keyword arguments for ``AIOKafkaProducer``/``AIOKafkaConsumer``/``AIOKafkaAdminClient``."""
    options: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    if settings.kafka_uses_tls:
        options["ssl_context"] = ssl_context or kafka_ssl_context(settings)
    if settings.kafka_security_protocol.startswith("SASL_"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = _secret(settings.kafka_sasl_password)
    return options


def faust_credentials(settings: Settings, ssl_context: ssl.SSLContext | None = None):
    """faust's ``broker_credentials`` for the same connection (``None`` for PLAINTEXT).

    NOTE: faust hands these to aiokafka through ``credentials_to_aiokafka_auth``: SSLCredentials
    become ``security_protocol=SSL`` + its context; SASLCredentials become SASL_PLAINTEXT, or
    SASL_SSL when they carry a context."""
    import faust

    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = ssl_context or kafka_ssl_context(settings)
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=_secret(settings.kafka_sasl_password),
        mechanism=settings.kafka_sasl_mechanism,
        ssl_context=context if protocol == "SASL_SSL" else None,
    )


def registry_client(settings: Settings):
    """The schema registry's httpx client: basic auth and CA from the settings (``None`` without
    a registry). Credentials written into the URL itself are not sent."""
    if not settings.schema_registry_url:
        return None
    import httpx

    auth = None
    if settings.schema_registry_username is not None:
        auth = httpx.BasicAuth(
            settings.schema_registry_username, _secret(settings.schema_registry_password)
        )
    verify: Any = True
    if settings.schema_registry_cafile is not None:
        verify = ssl.create_default_context(cafile=str(settings.schema_registry_cafile))
    return httpx.Client(timeout=5.0, auth=auth, verify=verify)


def registry_url(settings: Settings) -> str | None:
    """The registry URL without any ``user:password@`` (credentials come from their settings)."""
    url = settings.schema_registry_url
    if not url or "@" not in url:
        return url
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    logger.warning(
        "ignoring credentials in STREAMINFER_SCHEMA_REGISTRY_URL; set "
        "STREAMINFER_SCHEMA_REGISTRY_USERNAME and STREAMINFER_SCHEMA_REGISTRY_PASSWORD"
    )
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def schema_registry(
    settings: Settings, tasks: Callable[[], Iterable[str]] | Iterable[str] | None = None
):
    """The schema registry client (``None`` without a registry): its URL, auth, CA and subject
    strategy. The topic strategies register under the topics of ``tasks`` (a callable is asked at
    registration time; default: the built tasks of the model repository then)."""
    url = registry_url(settings)
    if not url:
        return None
    from streaminfer.schemas.registry import RegistryClient, record_topics

    def topics(record_name: str) -> list[str]:
        names = (
            repository_tasks(settings) if tasks is None else tasks() if callable(tasks) else tasks
        )
        return record_topics(settings.topic_prefix, names).get(record_name, [])

    return RegistryClient(
        url,
        client=registry_client(settings),
        topics=topics,
        subject_strategy=settings.schema_registry_subject_strategy,
    )


def repository_tasks(settings: Settings) -> list[str]:
    """The tasks with a built version in the model repository (none when it cannot be read)."""
    from streaminfer.models.config import ModelConfigError, load_repository_configs

    try:
        configs = load_repository_configs(settings.model_repository)
    except (ModelConfigError, OSError) as exc:
        logger.warning("schema registry subjects: cannot read the model repository (%s)", exc)
        return []
    return sorted(task for task, config in configs.items() if config.versions)


def avro_codec(settings: Settings):
    """The codec of a shell-side client (tail, submit), with the registry's auth and TLS."""
    from streaminfer.schemas.codec import AvroCodec

    return AvroCodec(registry=schema_registry(settings))


def uvicorn_ssl(settings: Settings) -> dict[str, str]:
    """``ssl_certfile``/``ssl_keyfile`` for ``uvicorn.run`` when the gateway serves HTTPS."""
    if not settings.gateway_uses_tls:
        return {}
    return {
        "ssl_certfile": str(settings.gateway_ssl_certfile),
        "ssl_keyfile": str(settings.gateway_ssl_keyfile),
    }


def gateway_url(settings: Settings, host: str | None = None, port: int | None = None) -> str:
    scheme = "https" if settings.gateway_uses_tls else "http"
    return f"{scheme}://{host or settings.gateway_host}:{port or settings.gateway_port}"


async def diagnose_kafka_tls(settings: Settings, timeout_s: float = 3.0) -> None:
    """Raise ConnectivityError when TLS to the first bootstrap server fails for a reason a setting
    explains (its certificate is not signed by our CA; it wants a client certificate). Called when
    a Kafka client cannot connect: aiokafka reports both only as "unable to bootstrap"."""
    if not settings.kafka_uses_tls:
        return
    server = settings.kafka_bootstrap_servers.split(",")[0].strip()
    host, _, port = server.rpartition(":")
    host = host.strip("[]")
    try:
        context = kafka_ssl_context(settings)
    except (ssl.SSLError, OSError) as exc:
        raise ConnectivityError(
            f"STREAMINFER_KAFKA_SSL_CAFILE/CERTFILE/KEYFILE cannot be loaded: {exc}"
        ) from exc
    writer = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(
                host, int(port), ssl=context, server_hostname=host
            )
        # NOTE: with TLS 1.3 a server that requires a client certificate refuses it only after
        # the client's handshake is done: the next read raises its alert or (a server that sends
        # no alert) reads end of stream. A broker that accepts us sends nothing unasked.
        try:
            async with asyncio.timeout(0.5):
                closed = await reader.read(1) == b""
        except TimeoutError:
            closed = False
        if closed:
            raise ssl.SSLError(
                1,
                "the broker closed the connection right after the TLS handshake "
                "(CERTIFICATE_REQUIRED or a certificate it does not accept)",
            )
    except ssl.SSLCertVerificationError as exc:
        cafile = settings.kafka_ssl_cafile or "the system's CA bundle"
        raise ConnectivityError(
            f"STREAMINFER_KAFKA_SSL_CAFILE: the certificate of the broker at {server} is not trusted "
            f"by {cafile} ({exc.verify_message})"
        ) from exc
    except ssl.SSLError as exc:
        if (
            "CERTIFICATE_REQUIRED" in str(exc)
            or "HANDSHAKE_FAILURE" in str(exc)
            or "BAD_CERTIFICATE" in str(exc)
        ):
            setting = (
                "STREAMINFER_KAFKA_SSL_CERTFILE"
                if settings.kafka_ssl_certfile is None
                else "STREAMINFER_KAFKA_SSL_CERTFILE/KEYFILE"
            )
            raise ConnectivityError(
                f"{setting}: the broker at {server} requires a client certificate it accepts "
                f"(mutual TLS): {getattr(exc, 'reason', None) or exc}"
            ) from exc
        raise ConnectivityError(
            f"STREAMINFER_KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol}: "
            f"TLS to {server} failed: {exc}"
        ) from exc
    except (OSError, TimeoutError) as exc:
        logger.debug("TLS probe of %s: %r", server, exc)  # not reachable: not a settings problem
    finally:
        if writer is not None:
            writer.close()


def _str(path) -> str | None:
    return None if path is None else str(path)


def _secret(value) -> str | None:
    return None if value is None else value.get_secret_value()
