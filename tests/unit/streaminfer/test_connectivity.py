"""The connectivity settings: every protocol and mechanism to aiokafka and faust arguments, the
combinations refused at start (naming the setting), and the redaction of secrets."""

from __future__ import annotations

import ssl

import faust
import pytest
from pydantic import ValidationError

from streaminfer import connectivity
from streaminfer.settings import Settings, redact_url

MECHANISMS = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("STREAMINFER_"):
            monkeypatch.delenv(name)


@pytest.fixture
def ca_file(tmp_path):
    from helpers.tls import make_pki

    return make_pki(tmp_path / "pki")


def sasl(protocol: str, mechanism: str, **fields) -> Settings:
    return Settings(
        kafka_security_protocol=protocol,
        kafka_sasl_mechanism=mechanism,
        kafka_sasl_username="alice",
        kafka_sasl_password="pw",
        **fields,
    )


def test_plaintext_by_default():
    settings = Settings()
    assert connectivity.kafka_options(settings) == {"security_protocol": "PLAINTEXT"}
    assert connectivity.faust_credentials(settings) is None
    assert connectivity.kafka_ssl_context(settings) is None


def test_ssl_builds_a_verifying_context_with_the_ca_and_client_certificate(ca_file):
    settings = Settings(
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=ca_file.ca,
        kafka_ssl_certfile=ca_file.client_cert,
        kafka_ssl_keyfile=ca_file.client_key,
    )
    options = connectivity.kafka_options(settings)
    assert set(options) == {"security_protocol", "ssl_context"}
    assert options["security_protocol"] == "SSL"
    context = options["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert any("streaminfer test CA" in str(c["subject"]) for c in context.get_ca_certs())
    credentials = connectivity.faust_credentials(settings, context)
    assert isinstance(credentials, faust.SSLCredentials) and credentials.context is context


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_sasl_plaintext(mechanism):
    settings = sasl("SASL_PLAINTEXT", mechanism)
    assert connectivity.kafka_options(settings) == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": "alice",
        "sasl_plain_password": "pw",
    }
    credentials = connectivity.faust_credentials(settings)
    assert isinstance(credentials, faust.SASLCredentials)
    assert (credentials.protocol.value, credentials.mechanism.value) == (
        "SASL_PLAINTEXT",
        mechanism,
    )
    assert (credentials.username, credentials.password, credentials.ssl_context) == (
        "alice",
        "pw",
        None,
    )


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_sasl_ssl(mechanism, ca_file):
    settings = sasl("SASL_SSL", mechanism, kafka_ssl_cafile=ca_file.ca)
    options = connectivity.kafka_options(settings)
    assert options["security_protocol"] == "SASL_SSL" and options["sasl_mechanism"] == mechanism
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    credentials = connectivity.faust_credentials(settings, options["ssl_context"])
    assert (credentials.protocol.value, credentials.mechanism.value) == ("SASL_SSL", mechanism)
    assert credentials.ssl_context is options["ssl_context"]


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"])
def test_faust_passes_aiokafka_the_same_arguments(protocol):
    """faust's own translation of our credentials gives what kafka_options gives aiokafka."""
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    settings = (
        sasl(protocol, "SCRAM-SHA-512")
        if protocol.startswith("SASL")
        else Settings(kafka_security_protocol=protocol)
    )
    context = connectivity.kafka_ssl_context(settings)
    ours = connectivity.kafka_options(settings, context)
    theirs = {
        k: v
        for k, v in credentials_to_aiokafka_auth(
            connectivity.faust_credentials(settings, context)
        ).items()
        if v is not None
    }
    assert theirs == ours


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        (
            {
                "kafka_security_protocol": "SASL_SSL",
                "kafka_sasl_username": "a",
                "kafka_sasl_password": "p",
            },
            "STREAMINFER_KAFKA_SASL_MECHANISM is required",
        ),
        (
            {
                "kafka_security_protocol": "SASL_PLAINTEXT",
                "kafka_sasl_mechanism": "PLAIN",
                "kafka_sasl_password": "p",
            },
            "STREAMINFER_KAFKA_SASL_USERNAME is required",
        ),
        (
            {
                "kafka_security_protocol": "SASL_PLAINTEXT",
                "kafka_sasl_mechanism": "PLAIN",
                "kafka_sasl_username": "a",
            },
            "STREAMINFER_KAFKA_SASL_PASSWORD is required",
        ),
        (
            {"kafka_sasl_mechanism": "PLAIN"},
            "need STREAMINFER_KAFKA_SECURITY_PROTOCOL SASL_PLAINTEXT or SASL_SSL",
        ),
        ({"kafka_ssl_cafile": "/etc/hostname"}, "STREAMINFER_KAFKA_SSL_* files need"),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_certfile": "/etc/hostname"},
            "STREAMINFER_KAFKA_SSL_KEYFILE is required with STREAMINFER_KAFKA_SSL_CERTFILE",
        ),
        (
            {"gateway_ssl_keyfile": "/etc/hostname"},
            "STREAMINFER_GATEWAY_SSL_CERTFILE is required with STREAMINFER_GATEWAY_SSL_KEYFILE",
        ),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "/nonexistent/ca.pem"},
            "STREAMINFER_KAFKA_SSL_CAFILE: no such file",
        ),
        (
            {"redis_url": "rediss://h:6380/0", "redis_ssl_cafile": "/nonexistent.pem"},
            "STREAMINFER_REDIS_SSL_CAFILE: no such file",
        ),
        ({"redis_ssl_cafile": "/etc/hostname"}, "STREAMINFER_REDIS_SSL_CAFILE needs a rediss://"),
        (
            {"schema_registry_username": "u"},
            "STREAMINFER_SCHEMA_REGISTRY_USERNAME and STREAMINFER_SCHEMA_REGISTRY_PASSWORD",
        ),
        (
            {"schema_registry_cafile": "/nonexistent.pem"},
            "STREAMINFER_SCHEMA_REGISTRY_CAFILE: no such file",
        ),
        ({"kafka_security_protocol": "TLS"}, "kafka_security_protocol"),
        (
            {
                "kafka_security_protocol": "SASL_SSL",
                "kafka_sasl_mechanism": "GSSAPI",
                "kafka_sasl_username": "a",
                "kafka_sasl_password": "p",
            },
            "kafka_sasl_mechanism",
        ),
    ],
)
def test_impossible_combinations_are_refused_naming_the_setting(fields, named):
    with pytest.raises(ValidationError) as caught:
        Settings(**fields)
    assert named in str(caught.value)


def test_the_cli_prints_one_line_naming_the_setting(monkeypatch, capsys):
    from streaminfer import cli

    monkeypatch.setenv("STREAMINFER_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("STREAMINFER_KAFKA_SASL_USERNAME", "a")
    monkeypatch.setenv("STREAMINFER_KAFKA_SASL_PASSWORD", "secret-pw")
    with pytest.raises(SystemExit) as exited:
        cli.main(["config", "show"])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("streaminfer config: ")
        and "STREAMINFER_KAFKA_SASL_MECHANISM is required" in err
    )
    assert "\n" not in err and "secret-pw" not in err


def test_secrets_are_redacted_in_the_summary():
    settings = Settings(
        redis_url="rediss://worker:redis-pw@redis:6380/0",
        schema_registry_url="https://reg:url-pw@registry:8081/",
        schema_registry_username="reg",
        schema_registry_password="reg-pw",
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_sasl_username="alice",
        kafka_sasl_password="kafka-pw",
        jwt_public_keys="-----BEGIN PUBLIC KEY-----x",
    )
    summary = settings.summary()
    text = repr(summary)
    for secret in ("redis-pw", "url-pw", "reg-pw", "kafka-pw", "BEGIN PUBLIC KEY"):
        assert secret not in text
    assert summary["redis_url"] == "rediss://worker:***@redis:6380/0"
    assert summary["schema_registry_url"] == "https://reg:***@registry:8081/"
    assert summary["kafka_sasl_password"] == summary["schema_registry_password"] == "***"
    assert summary["kafka_sasl_username"] == "alice"
    assert Settings().summary()["kafka_sasl_password"] is None


def test_config_show_prints_no_secret(monkeypatch, capsys):
    from streaminfer import cli

    monkeypatch.setenv("STREAMINFER_REDIS_URL", "redis://:hunter2@localhost:6379/0")
    monkeypatch.setenv("STREAMINFER_SCHEMA_REGISTRY_URL", "http://u:hunter3@localhost:8081")
    with pytest.raises(SystemExit):
        cli.main(["config", "show"])
    out = capsys.readouterr().out
    assert "hunter2" not in out and "hunter3" not in out and "redis://:***@localhost:6379/0" in out


def test_info_does_not_show_the_registry_url_password(monkeypatch):
    """/info is unauthenticated: it showed a password written into the registry URL."""
    from fastapi.testclient import TestClient

    from streaminfer.gateway.app import create_app

    settings = Settings(
        auth="disabled",
        schema_registry_url="http://reg:letmein@127.0.0.1:1",
        redis_url="redis://default:redispw@127.0.0.1:1/0",
    )
    app = create_app(settings)
    response = TestClient(app).get("/info")  # not entered: no lifespan, no servers needed
    assert response.status_code == 200
    body = response.text
    assert "letmein" not in body and "redispw" not in body
    assert "http://reg:***@127.0.0.1:1" in body


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("redis://:pw@h:1/0", "redis://:***@h:1/0"),
        ("rediss://user:p@ss:w@rd@h:1/0?x=1", "rediss://user:***@h:1/0?x=1"),
        ("redis://token@h:1", "redis://***@h:1"),
        (None, None),
    ],
)
def test_redact_url(url, redacted):
    assert redact_url(url) == redacted


def test_rediss_url_carries_the_ca_file_for_every_redis_client(ca_file):
    from redis.asyncio.connection import SSLConnection, parse_url

    settings = Settings(
        redis_url="rediss://worker:pw@127.0.0.1:6380/2", redis_ssl_cafile=ca_file.ca
    )
    parsed = parse_url(settings.redis_dsn)
    assert parsed["connection_class"] is SSLConnection
    assert (parsed["username"], parsed["password"], parsed["db"]) == ("worker", "pw", 2)
    assert parsed["ssl_ca_certs"] == str(ca_file.ca)
    assert Settings(redis_url="redis://h:1/0").redis_dsn == "redis://h:1/0"


def test_registry_client_takes_auth_and_ca_from_settings_never_the_url(ca_file):
    import httpx

    settings = Settings(
        schema_registry_url="https://url-user:url-pw@registry:8081",
        schema_registry_username="reg",
        schema_registry_password="reg-pw",
        schema_registry_cafile=ca_file.ca,
    )
    assert connectivity.registry_url(settings) == "https://registry:8081"
    client = connectivity.registry_client(settings)
    try:
        request = client.build_request("GET", connectivity.registry_url(settings) + "/subjects")
        auth_flow = client._auth.sync_auth_flow(request)
        sent = next(auth_flow)
        assert sent.headers["Authorization"] == httpx.BasicAuth("reg", "reg-pw")._auth_header
    finally:
        client.close()
    assert connectivity.registry_client(Settings()) is None


def test_gateway_tls_settings(ca_file):
    settings = Settings(
        gateway_ssl_certfile=ca_file.server_cert,
        gateway_ssl_keyfile=ca_file.server_key,
        gateway_port=8443,
    )
    assert connectivity.uvicorn_ssl(settings) == {
        "ssl_certfile": str(ca_file.server_cert),
        "ssl_keyfile": str(ca_file.server_key),
    }
    assert connectivity.gateway_url(settings) == "https://127.0.0.1:8443"
    assert connectivity.uvicorn_ssl(Settings()) == {}
    assert connectivity.gateway_url(Settings()) == "http://127.0.0.1:8000"
