"""How every part of the project connects to Kafka: one frozen config, parsed once, for both clients.

`KafkaClientConfig.from_env_and_args(args)` reads flags (see `add_arguments`) over environment variables
over defaults, validates them, and is then passed around; nothing else reads the environment for Kafka.
It produces keyword arguments for kafka-python (`KafkaProducer`, `KafkaConsumer`, `KafkaAdminClient`)
and a config dict for confluent-kafka, with TLS and SASL (PLAIN, SCRAM) passed through unchanged.

Environment (flags win): FRAUD_KAFKA_BOOTSTRAP (default 127.0.0.1:9092), FRAUD_KAFKA_SECURITY_PROTOCOL,
FRAUD_KAFKA_SASL_MECHANISM, FRAUD_KAFKA_SASL_USERNAME, FRAUD_KAFKA_SASL_PASSWORD (environment only: a
password on the command line is visible to every user), FRAUD_KAFKA_SSL_CAFILE, FRAUD_KAFKA_SSL_CERTFILE,
FRAUD_KAFKA_SSL_KEYFILE, FRAUD_KAFKA_SSL_KEY_PASSWORD (environment only), FRAUD_KAFKA_SSL_CHECK_HOSTNAME
(1/0), FRAUD_KAFKA_CLIENT_ID, FRAUD_KAFKA_REPLICATION_FACTOR and FRAUD_KAFKA_MIN_INSYNC_REPLICAS.

`ensure_topics(config, specs)` creates the topics of fraud.topics (what `fraudctl topics` runs), with the
config's replication factor and min.insync.replicas. Unset (the default), both are the cluster's own
defaults (`default.replication.factor`, `min.insync.replicas`), so the topics fit whatever cluster the
project talks to: 1 / 1 on the single embedded broker, 3 / 2 on the embedded 3-node cluster
(`fraudctl kafka start --brokers 3`) and on a production cluster configured that way.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fraud.errors import FraudError
from fraud.topics import TopicSpec

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_CLIENT_ID = "fraud"
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

_ENV = "FRAUD_KAFKA_"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_bootstrap(value: str, where: str = "bootstrap servers") -> tuple[str, ...]:
    """'h1:9092,h2:9092' -> ('h1:9092', 'h2:9092'), each checked to be host:port."""
    servers = tuple(part.strip() for part in value.split(",") if part.strip())
    if not servers:
        raise FraudError(f"{where}: empty; expected host:port[,host:port...]")
    for server in servers:
        host, sep, port = server.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise FraudError(f"{where}: {server!r} is not host:port")
    return servers


@dataclass(frozen=True)
class KafkaClientConfig:
    """Connection settings shared by every Kafka client of the project."""

    bootstrap_servers: tuple[str, ...] = (DEFAULT_BOOTSTRAP,)
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_key_password: str | None = field(default=None, repr=False)
    ssl_check_hostname: bool = True
    client_id: str = DEFAULT_CLIENT_ID
    #: Replication factor of the topics the project creates (None: the cluster's default.replication.factor).
    replication_factor: int | None = None
    #: min.insync.replicas of the topics the project creates (None: the cluster's min.insync.replicas).
    min_insync_replicas: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.bootstrap_servers, str):
            object.__setattr__(self, "bootstrap_servers", parse_bootstrap(self.bootstrap_servers))
        else:
            parse_bootstrap(",".join(self.bootstrap_servers))
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise FraudError(
                f"security protocol {self.security_protocol!r} is not one of {', '.join(SECURITY_PROTOCOLS)}"
            )
        sasl = self.security_protocol.startswith("SASL_")
        tls = self.security_protocol.endswith("SSL")
        if sasl:
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise FraudError(
                    f"SASL mechanism {self.sasl_mechanism!r} is not one of {', '.join(SASL_MECHANISMS)}"
                    f" (needed by security protocol {self.security_protocol})"
                )
            if not self.sasl_username or self.sasl_password is None:
                raise FraudError(
                    f"security protocol {self.security_protocol} needs a SASL username (--sasl-username or "
                    f"{_ENV}SASL_USERNAME) and password ({_ENV}SASL_PASSWORD)"
                )
        elif self.sasl_mechanism or self.sasl_username or self.sasl_password:
            raise FraudError(f"SASL settings given but security protocol is {self.security_protocol}")
        files = {"SSL CA file": self.ssl_cafile, "SSL cert file": self.ssl_certfile, "SSL key file": self.ssl_keyfile}
        if not tls and any(files.values()):
            raise FraudError(f"SSL files given but security protocol is {self.security_protocol}")
        for what, path in files.items():
            if path is not None and not Path(path).is_file():
                raise FraudError(f"{what} {path} does not exist")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise FraudError("SSL cert file and key file go together (client authentication needs both)")
        if not self.client_id:
            raise FraudError("client id must not be empty")
        for what, value in (("replication factor", self.replication_factor),
                            ("min.insync.replicas", self.min_insync_replicas)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise FraudError(f"{what} must be a whole number >= 1, got {value!r}")
        if (self.replication_factor is not None and self.min_insync_replicas is not None
                and self.min_insync_replicas > self.replication_factor):
            raise FraudError(f"min.insync.replicas ({self.min_insync_replicas}) must not exceed the replication "
                             f"factor ({self.replication_factor}): no write with acks=all could succeed")

    # -- parsing ---------------------------------------------------------------------------------

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """Add the connection flags (--bootstrap, --security-protocol, ...) to a command's parser."""
        group = parser.add_argument_group("Kafka connection (flags override FRAUD_KAFKA_* environment variables)")
        group.add_argument("--bootstrap", metavar="HOST:PORT[,...]", help=f"bootstrap servers (default {DEFAULT_BOOTSTRAP})")
        group.add_argument("--security-protocol", choices=SECURITY_PROTOCOLS, help="default PLAINTEXT")
        group.add_argument("--sasl-mechanism", choices=SASL_MECHANISMS)
        group.add_argument("--sasl-username")
        group.add_argument("--ssl-cafile", type=Path, metavar="PEM")
        group.add_argument("--ssl-certfile", type=Path, metavar="PEM")
        group.add_argument("--ssl-keyfile", type=Path, metavar="PEM")
        group.add_argument("--client-id")
        group.add_argument("--replication-factor", type=int, metavar="N",
                           help="replication factor of created topics (default: the cluster's default)")
        group.add_argument("--min-insync-replicas", type=int, metavar="N",
                           help="min.insync.replicas of created topics (default: the cluster's default)")

    @classmethod
    def from_env_and_args(
        cls,
        args: argparse.Namespace | None = None,
        environ: Mapping[str, str] | None = None,
        *,
        client_id: str | None = None,
    ) -> KafkaClientConfig:
        """Flags (from `add_arguments`) over FRAUD_KAFKA_* variables over defaults; validated once here.

        `client_id` is the caller's default client id (e.g. "fraud-bridge"), used when neither a flag nor
        the environment sets one.
        """
        env = os.environ if environ is None else environ

        def pick(attr: str, env_name: str) -> Any:
            value = getattr(args, attr, None) if args is not None else None
            if value is not None:
                return value
            raw = env.get(_ENV + env_name)
            return raw if raw not in (None, "") else None

        check_raw = env.get(_ENV + "SSL_CHECK_HOSTNAME", "").strip().lower()
        if check_raw and check_raw not in _TRUE + _FALSE:
            raise FraudError(f"{_ENV}SSL_CHECK_HOSTNAME={check_raw!r}: expected 1 or 0")
        bootstrap = pick("bootstrap", "BOOTSTRAP") or DEFAULT_BOOTSTRAP
        where = "--bootstrap" if getattr(args, "bootstrap", None) else f"{_ENV}BOOTSTRAP"
        protocol = pick("security_protocol", "SECURITY_PROTOCOL") or "PLAINTEXT"

        def path(attr: str, env_name: str) -> Path | None:
            value = pick(attr, env_name)
            return Path(value).expanduser() if value is not None else None

        def count(attr: str, env_name: str, flag: str) -> int | None:
            value = pick(attr, env_name)
            if value is None or isinstance(value, int):
                return value
            try:
                return int(str(value).strip())
            except ValueError:
                raise FraudError(f"{_ENV}{env_name}={value!r}: expected a whole number (or use {flag})") from None

        return cls(
            bootstrap_servers=parse_bootstrap(bootstrap, where),
            security_protocol=str(protocol).upper(),
            sasl_mechanism=pick("sasl_mechanism", "SASL_MECHANISM"),
            sasl_username=pick("sasl_username", "SASL_USERNAME"),
            sasl_password=env.get(_ENV + "SASL_PASSWORD"),
            ssl_cafile=path("ssl_cafile", "SSL_CAFILE"),
            ssl_certfile=path("ssl_certfile", "SSL_CERTFILE"),
            ssl_keyfile=path("ssl_keyfile", "SSL_KEYFILE"),
            ssl_key_password=env.get(_ENV + "SSL_KEY_PASSWORD") or None,
            ssl_check_hostname=check_raw not in _FALSE,
            client_id=pick("client_id", "CLIENT_ID") or client_id or DEFAULT_CLIENT_ID,
            replication_factor=count("replication_factor", "REPLICATION_FACTOR", "--replication-factor"),
            min_insync_replicas=count("min_insync_replicas", "MIN_INSYNC_REPLICAS", "--min-insync-replicas"),
        )

    def with_client_id(self, client_id: str) -> KafkaClientConfig:
        return dataclasses.replace(self, client_id=client_id)

    @property
    def bootstrap(self) -> str:
        """Bootstrap servers as one comma-separated string."""
        return ",".join(self.bootstrap_servers)

    # -- kafka-python ----------------------------------------------------------------------------

    def kafka_python(self, **overrides: Any) -> dict[str, Any]:
        """Keyword arguments every kafka-python client accepts (connection, TLS, SASL, client id)."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": list(self.bootstrap_servers),
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol.startswith("SASL_"):
            kwargs.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        if self.security_protocol.endswith("SSL"):
            kwargs["ssl_check_hostname"] = self.ssl_check_hostname
            for key, value in (
                ("ssl_cafile", self.ssl_cafile),
                ("ssl_certfile", self.ssl_certfile),
                ("ssl_keyfile", self.ssl_keyfile),
                ("ssl_password", self.ssl_key_password),
            ):
                if value is not None:
                    kwargs[key] = str(value)
        kwargs.update(overrides)
        return kwargs

    def producer_kwargs(self, **overrides: Any) -> dict[str, Any]:
        """For `KafkaProducer(**...)`; the caller adds acks, idempotence, serializers as it needs."""
        return self.kafka_python(**overrides)

    def consumer_kwargs(self, group_id: str | None = None, **overrides: Any) -> dict[str, Any]:
        """For `KafkaConsumer(**...)`: auto-commit off (offsets are committed after the work is done)."""
        return self.kafka_python(group_id=group_id, enable_auto_commit=False, **overrides)

    def admin_kwargs(self, **overrides: Any) -> dict[str, Any]:
        """For `KafkaAdminClient(**...)`."""
        return self.kafka_python(**overrides)

    # -- confluent-kafka -------------------------------------------------------------------------

    def confluent(self, **overrides: Any) -> dict[str, Any]:
        """A confluent-kafka (librdkafka) config dict; `overrides` use librdkafka's dotted names."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "client.id": self.client_id,
            "security.protocol": self.security_protocol,
        }
        if self.security_protocol.startswith("SASL_"):
            conf.update({"sasl.mechanism": self.sasl_mechanism, "sasl.username": self.sasl_username,
                         "sasl.password": self.sasl_password})
        if self.security_protocol.endswith("SSL"):
            conf["ssl.endpoint.identification.algorithm"] = "https" if self.ssl_check_hostname else "none"
            for key, value in (
                ("ssl.ca.location", self.ssl_cafile),
                ("ssl.certificate.location", self.ssl_certfile),
                ("ssl.key.location", self.ssl_keyfile),
                ("ssl.key.password", self.ssl_key_password),
            ):
                if value is not None:
                    conf[key] = str(value)
        conf.update(overrides)
        return conf


# -- topics ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopicResult:
    name: str
    partitions: int
    action: str  # "created", "exists" or "increased"


def _describe(admin: Any, names: list[str]) -> dict[str, dict]:
    """name -> metadata dict, for the topics among `names` that exist."""
    found = {}
    for topic in admin.describe_topics(names):
        if topic.get("error_code", 0) == 0:
            found[topic["name"]] = topic
    return found


def _check_configs(admin: Any, specs: list[TopicSpec]) -> None:
    from kafka.admin import ConfigResource, ConfigResourceType

    wanted = [spec for spec in specs if spec.config]
    if not wanted:
        return
    resources = [ConfigResource(ConfigResourceType.TOPIC, spec.name, list(spec.config)) for spec in wanted]
    described = admin.describe_configs(resources, config_filter="all").get("topic", {})
    for spec in wanted:
        have = described.get(spec.name, {})
        for key, value in spec.config.items():
            actual = have.get(key, {}).get("value")
            if actual != value:
                raise FraudError(
                    f"topic {spec.name} exists with {key}={actual}, but fraud.topics declares {key}={value}; "
                    f"change it with kafka-configs or delete the topic"
                )


def ensure_topics(
    config: KafkaClientConfig,
    specs: Iterable[TopicSpec],
    *,
    replication_factor: int | None = None,
    increase_partitions: bool = False,
    timeout_s: float = 30.0,
) -> list[TopicResult]:
    """Create each topic of `specs` that does not exist, with its partitions and config (idempotent).

    An existing topic with the declared partition count and config is fine. One with fewer partitions is
    an error unless `increase_partitions` (adding partitions changes which partition a key lands in, so it
    is never done silently); one with more partitions, or a different declared config, is an error.
    Replication: `replication_factor` (None: `config.replication_factor`, whose None is the cluster's
    default) and `config.min_insync_replicas` (added to each topic's config when set). An existing topic
    with another replica count than an explicitly configured factor is an error (Kafka changes it only
    by reassigning partitions).
    """
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    if replication_factor is None:
        replication_factor = config.replication_factor
    if config.min_insync_replicas is not None:
        isr = {"min.insync.replicas": str(config.min_insync_replicas)}
        specs = [dataclasses.replace(spec, config={**spec.config, **isr}) for spec in specs]
    specs = list(specs)
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise FraudError(f"duplicate topic names in {names}")
    try:
        admin = KafkaAdminClient(
            **config.admin_kwargs(request_timeout_ms=int(timeout_s * 1000), bootstrap_timeout_ms=int(timeout_s * 1000))
        )
    except KafkaError as exc:
        raise FraudError(f"cannot reach Kafka at {config.bootstrap}: {exc}") from exc
    try:
        existing = _describe(admin, names)
        missing = [spec for spec in specs if spec.name not in existing]
        results: dict[str, TopicResult] = {}
        if missing:
            request = {
                spec.name: {
                    "num_partitions": spec.partitions,
                    "replication_factor": replication_factor if replication_factor is not None else -1,
                    "configs": dict(spec.config),
                }
                for spec in missing
            }
            response = admin.create_topics(request, timeout_ms=int(timeout_s * 1000), raise_errors=False)
            for topic in response["topics"]:
                code = topic.get("error_code", 0)
                if code == 0:
                    results[topic["name"]] = TopicResult(topic["name"], request[topic["name"]]["num_partitions"], "created")
                elif code != TopicAlreadyExistsError.errno:  # a concurrent creator is fine: checked below
                    msg = topic.get("error_message") or f"error code {code}"
                    rf = request[topic["name"]]["replication_factor"]
                    rf_text = f" (replication factor {rf})" if rf != -1 else ""
                    raise FraudError(f"cannot create topic {topic['name']}{rf_text} on {config.bootstrap}: {msg}")
            _wait_visible(admin, [spec.name for spec in missing], timeout_s)
            existing = _describe(admin, names)
        grow: dict[str, int] = {}
        for spec in specs:
            if spec.name in results:
                continue
            partitions = existing[spec.name]["partitions"]
            have = len(partitions)
            replicas = {len(p.get("replica_nodes", ())) for p in partitions}
            if replication_factor is not None and replication_factor > 0 and replicas != {replication_factor}:
                raise FraudError(
                    f"topic {spec.name} exists with {'/'.join(map(str, sorted(replicas)))} replicas per partition, "
                    f"but the replication factor is configured as {replication_factor} "
                    f"(reassign its partitions, or delete the topic)"
                )
            if have == spec.partitions:
                results[spec.name] = TopicResult(spec.name, have, "exists")
            elif have < spec.partitions and increase_partitions:
                grow[spec.name] = spec.partitions
                results[spec.name] = TopicResult(spec.name, spec.partitions, "increased")
            else:
                hint = " (pass --increase-partitions to add partitions)" if have < spec.partitions else ""
                raise FraudError(
                    f"topic {spec.name} has {have} partitions, fraud.topics declares {spec.partitions}{hint}"
                )
        if grow:
            admin.create_partitions(grow, timeout_ms=int(timeout_s * 1000))
        _check_configs(admin, [spec for spec in specs if results[spec.name].action != "created"])
        return [results[name] for name in names]
    except KafkaError as exc:
        raise FraudError(f"topic administration on {config.bootstrap} failed: {exc}") from exc
    finally:
        admin.close()


def _wait_visible(admin: Any, names: list[str], timeout_s: float) -> None:
    """Wait until every topic has a leader for each partition (creation is asynchronous)."""
    deadline = time.monotonic() + timeout_s
    while True:
        topics = {t["name"]: t for t in admin.describe_topics(names)}
        ready = [
            n
            for n in names
            if n in topics
            and topics[n].get("error_code", 0) == 0
            and topics[n]["partitions"]
            and all(p.get("leader_id", p.get("leader", -1)) >= 0 for p in topics[n]["partitions"])
        ]
        if len(ready) == len(names):
            return
        if time.monotonic() > deadline:
            raise FraudError(f"topics {sorted(set(names) - set(ready))} not ready after {timeout_s:.0f} s")
        time.sleep(0.1)
