"""KafkaClientConfig: flags over environment over defaults, validation, and the kwargs each client gets."""

from __future__ import annotations

import argparse

import pytest

from fraud.errors import FraudError
from fraud.kafka_config import KafkaClientConfig, parse_bootstrap


def _parse(argv: list[str], env: dict[str, str] | None = None, **kw) -> KafkaClientConfig:
    parser = argparse.ArgumentParser()
    KafkaClientConfig.add_arguments(parser)
    return KafkaClientConfig.from_env_and_args(parser.parse_args(argv), env or {}, **kw)


def test_defaults_without_flags_or_environment():
    cfg = _parse([])
    assert cfg.bootstrap_servers == ("127.0.0.1:9092",)
    assert cfg.security_protocol == "PLAINTEXT" and cfg.client_id == "fraud"
    assert KafkaClientConfig.from_env_and_args(None, {}, client_id="fraud-bridge").client_id == "fraud-bridge"


def test_flags_win_over_environment_which_wins_over_defaults():
    env = {"FRAUD_KAFKA_BOOTSTRAP": "k1:9092,k2:9093", "FRAUD_KAFKA_CLIENT_ID": "from-env"}
    assert _parse([], env).bootstrap_servers == ("k1:9092", "k2:9093")
    assert _parse([], env, client_id="caller-default").client_id == "from-env"
    cfg = _parse(["--bootstrap", "flag:1234", "--client-id", "from-flag"], env)
    assert cfg.bootstrap == "flag:1234" and cfg.client_id == "from-flag"


@pytest.mark.parametrize("value", ["nohost", "h:notaport", "h:70000", ","])
def test_bad_bootstrap_names_where_it_came_from(value):
    with pytest.raises(FraudError, match="FRAUD_KAFKA_BOOTSTRAP"):
        _parse([], {"FRAUD_KAFKA_BOOTSTRAP": value})
    with pytest.raises(FraudError, match="--bootstrap"):
        _parse(["--bootstrap", value])


def test_an_empty_variable_counts_as_unset():
    assert _parse([], {"FRAUD_KAFKA_BOOTSTRAP": ""}).bootstrap == "127.0.0.1:9092"


def test_parse_bootstrap_accepts_lists_with_spaces():
    assert parse_bootstrap(" a:1 , b:2 ") == ("a:1", "b:2")


def test_sasl_ssl_passes_through_to_kafka_python_and_confluent(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    env = {"FRAUD_KAFKA_SASL_PASSWORD": "s3cret", "FRAUD_KAFKA_SSL_CHECK_HOSTNAME": "0"}
    cfg = _parse(["--bootstrap", "b:9093", "--security-protocol", "SASL_SSL", "--sasl-mechanism", "SCRAM-SHA-512",
                  "--sasl-username", "svc", "--ssl-cafile", str(ca)], env, client_id="fraud-bridge")
    assert "s3cret" not in repr(cfg)  # secrets stay out of logs
    kp = cfg.kafka_python()
    assert kp == {
        "bootstrap_servers": ["b:9093"], "client_id": "fraud-bridge", "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "svc", "sasl_plain_password": "s3cret",
        "ssl_check_hostname": False, "ssl_cafile": str(ca),
    }
    ck = cfg.confluent(**{"group.id": "g"})
    assert ck == {
        "bootstrap.servers": "b:9093", "client.id": "fraud-bridge", "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "svc", "sasl.password": "s3cret",
        "ssl.endpoint.identification.algorithm": "none", "ssl.ca.location": str(ca), "group.id": "g",
    }


def test_mutual_tls_files(tmp_path):
    files = {}
    for name in ("ca", "cert", "key"):
        files[name] = tmp_path / f"{name}.pem"
        files[name].write_text("x")
    cfg = KafkaClientConfig(bootstrap_servers="b:9093", security_protocol="SSL", ssl_cafile=files["ca"],
                            ssl_certfile=files["cert"], ssl_keyfile=files["key"], ssl_key_password="kp")
    kp = cfg.kafka_python()
    assert kp["ssl_certfile"] == str(files["cert"]) and kp["ssl_keyfile"] == str(files["key"])
    assert kp["ssl_password"] == "kp" and "sasl_mechanism" not in kp
    ck = cfg.confluent()
    assert ck["ssl.certificate.location"] == str(files["cert"]) and ck["ssl.key.password"] == "kp"
    with pytest.raises(FraudError, match="cert file and key file go together"):
        KafkaClientConfig(security_protocol="SSL", ssl_certfile=files["cert"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": "u"}, "password"),
        ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "GSSAPI", "sasl_username": "u",
          "sasl_password": "p"}, "SASL mechanism 'GSSAPI'"),
        ({"security_protocol": "PLAINTEXT", "sasl_username": "u"}, "SASL settings given but security protocol is PLAINTEXT"),
        ({"security_protocol": "TLS"}, "security protocol 'TLS'"),
        ({"security_protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"}, "SSL CA file /nonexistent/ca.pem does not exist"),
        ({"security_protocol": "PLAINTEXT", "ssl_cafile": __file__}, "SSL files given but security protocol is PLAINTEXT"),
        ({"client_id": ""}, "client id"),
    ],
)
def test_invalid_settings_are_refused_at_parse_time(kwargs, message):
    with pytest.raises(FraudError, match=message):
        KafkaClientConfig(**kwargs)


def test_bad_check_hostname_value():
    with pytest.raises(FraudError, match="FRAUD_KAFKA_SSL_CHECK_HOSTNAME"):
        _parse([], {"FRAUD_KAFKA_SSL_CHECK_HOSTNAME": "maybe"})


def test_kwargs_are_accepted_by_the_real_clients():
    """Every key handed to kafka-python is one its constructors know (they reject unknown ones)."""
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    cfg = KafkaClientConfig(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="u",
                            sasl_password="p")
    for cls, kwargs in ((KafkaProducer, cfg.producer_kwargs()), (KafkaConsumer, cfg.consumer_kwargs("g")),
                        (KafkaAdminClient, cfg.admin_kwargs())):
        known = set(cls.DEFAULT_CONFIG)
        assert set(kwargs) <= known, (cls.__name__, set(kwargs) - known)
    assert cfg.consumer_kwargs("g")["enable_auto_commit"] is False


def test_config_is_frozen_and_with_client_id_copies():
    cfg = KafkaClientConfig()
    with pytest.raises(AttributeError):
        cfg.client_id = "x"  # type: ignore[misc]
    other = cfg.with_client_id("monitor")
    assert other.client_id == "monitor" and cfg.client_id == "fraud"
