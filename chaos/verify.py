"""Reading a run's output back and reconciling it with what went in.

`read_until_quiescent` reads topics from their beginning (read_committed: what a downstream consumer sees)
until everything expected has arrived *and* then nothing new for a settle period: a duplicate that shows
up late is counted, not missed. It never stops merely because the expected count was reached.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from chaos.corpus import DLQ_BRIDGE, DLQ_MONITORING, DLQ_PREPROCESS, MONITOR, PREPROCESSING, SINK, Bad
from fraud.contract import DeadLetter
from fraud.kafka_config import KafkaClientConfig
from fraud.stream.reader import PartitionReader
from fraud.stream.records import Record


@dataclass
class Quiescence:
    records: dict[str, list[Record]]  # topic -> records in read order
    complete: bool  # everything expected arrived
    waited_s: float  # from the start of reading to quiescence (or the timeout)
    settle_s: float


def read_until_quiescent(kafka: KafkaClientConfig, topics: Iterable[str], *, observe: Callable[[list[Record]], None],
                         complete: Callable[[], bool], settle_s: float, timeout_s: float, group_id: str,
                         progress: Callable[[dict[str, list[Record]]], None] | None = None) -> Quiescence:
    """Read `topics` from the beginning, handing every batch to `observe`, until `complete()` holds and no
    record arrived for `settle_s` afterwards, or `timeout_s` passes."""
    topics = list(topics)
    by_topic: dict[str, list[Record]] = {t: [] for t in topics}
    reader = PartitionReader(kafka, topics, group_id=group_id, default_start="earliest")
    started = time.monotonic()
    last_new = started
    last_progress = started
    try:
        while True:
            got = reader.poll(5000, 0.5)
            now = time.monotonic()
            if got:
                last_new = now
                for r in got:
                    by_topic[r.topic].append(r)
                observe(got)
            if now - last_new >= settle_s and complete():
                return Quiescence(by_topic, True, now - started, settle_s)
            if now - started > timeout_s:
                return Quiescence(by_topic, complete(), now - started, settle_s)
            if progress is not None and now - last_progress > 15:
                last_progress = now
                progress(by_topic)
    finally:
        reader.close()


@dataclass
class Tally:
    """One expectation's outcome: found exactly once, missing, or found more than once."""

    expected: int = 0
    once: int = 0
    missing: list = field(default_factory=list)
    duplicated: dict = field(default_factory=dict)  # item -> times seen
    unexpected: int = 0  # items seen that were not expected at all

    @property
    def extra(self) -> int:
        return sum(n - 1 for n in self.duplicated.values())


def tally(expected: Iterable, seen: Iterable) -> Tally:
    want = set(expected)
    counts = Counter(seen)
    t = Tally(expected=len(want))
    for item in want:
        n = counts.get(item, 0)
        if n == 0:
            t.missing.append(item)
        elif n == 1:
            t.once += 1
        else:
            t.duplicated[item] = n
    t.unexpected = sum(n for item, n in counts.items() if item not in want)
    return t


def keys_of(records: Iterable[Record]) -> list[str]:
    return [r.key.decode("utf-8", "replace") if r.key is not None else "" for r in records]


@dataclass(frozen=True)
class DeadLetterSeen:
    key: bytes
    component: str
    reason: str
    source_topic: str


def dead_letters(records: Iterable[Record]) -> list[DeadLetterSeen]:
    out = []
    for r in records:
        d = DeadLetter.from_record(r.key, r.value, r.headers)
        out.append(DeadLetterSeen(d.key or b"", d.component or "", d.reason or "", d.source_topic or ""))
    return out


@dataclass
class DeadLetterCheck:
    """Per (dead-letter topic role, component): each bad record expected there, how often it was found, and
    whether the reason was right."""

    tallies: dict[tuple[str, str], Tally]
    wrong_reason: list[tuple[str, str, str, str]]  # (component, key, expected, got)

    @property
    def found(self) -> int:
        return sum(t.once + len(t.duplicated) for t in self.tallies.values())

    @property
    def expected(self) -> int:
        return sum(t.expected for t in self.tallies.values())

    @property
    def missing(self) -> int:
        return sum(len(t.missing) for t in self.tallies.values())

    def extra(self, components: Iterable[str]) -> int:
        wanted = set(components)
        return sum(t.extra for (_role, comp), t in self.tallies.items() if comp in wanted)


def check_dead_letters(bad: Iterable[Bad], by_role: Mapping[str, list[Record]]) -> DeadLetterCheck:
    """Every bad record in each dead-letter topic it must reach, from the right job, with its reason."""
    bad = list(bad)
    expected: dict[tuple[str, str], list[bytes]] = defaultdict(list)
    reasons: dict[bytes, str] = {}
    for b in bad:
        reasons[b.key] = b.reason
        for role, component in b.expected:
            expected[(role, component)].append(b.key)
    seen: dict[tuple[str, str], list[bytes]] = defaultdict(list)
    wrong = []
    for role in (DLQ_PREPROCESS, DLQ_BRIDGE, DLQ_MONITORING):
        for d in dead_letters(by_role.get(role, [])):
            seen[(role, d.component)].append(d.key)
            want = reasons.get(d.key)
            if want is not None and d.reason != want:
                wrong.append((d.component, d.key.decode("utf-8", "replace"), want, d.reason))
    tallies = {path: tally(keys, seen.get(path, [])) for path, keys in expected.items()}
    for path, keys in seen.items():  # dead letters from a job nothing was expected of
        if path not in tallies:
            tallies[path] = tally([], keys)
    return DeadLetterCheck(tallies, wrong)


#: Jobs whose dead letters are exactly once (written in their Kafka transactions); the sink's are at least
#: once (produced and acknowledged before its warehouse commit).
EXACTLY_ONCE_DEAD_LETTERS = (PREPROCESSING, "kafka_bridge", MONITOR)
AT_LEAST_ONCE_DEAD_LETTERS = (SINK,)
