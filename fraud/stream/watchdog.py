"""Ways out for a Kafka client that stopped working without saying so.

Two librdkafka failure modes seen on a 3-broker cluster under broker bounces (`make test-chaos`) never raise
an error; the process just stops making progress while it looks healthy:

- a transactional commit that blocks forever (`send_offsets_to_transaction` past its timeout after the group
  coordinator moved; confluentinc/librdkafka#5456, #5511): `fraud.stream.delivery` calls `exit_wedged` when a
  background commit has not returned long after its own timeouts;
- a consumer that is assigned its partitions but never fetches (the committed-offset fetch at assignment
  failed with NOT_COORDINATOR and the partitions stay without a position): `FetchWatch` notices partitions
  that hold records nobody fetches.

The remedy for both is the same: end the process with `WEDGED_EXIT_CODE` and let its supervisor
(Kubernetes, compose, the chaos harness) start it again. Nothing is lost or duplicated by that: under
exactly-once the restart's `init_transactions` fences the old producer and aborts its open transaction,
and the new consumer resumes from the committed offsets; under at-least-once uncommitted records are
delivered again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping

from fraud.logs import log_event
from fraud.stream.records import TopicPartition

log = logging.getLogger("fraud.stream")

#: Exit status of a process whose Kafka client is wedged (EX_TEMPFAIL: try again).
WEDGED_EXIT_CODE = 75
#: Default of every service's `--fetch-stall-s`: twice Kafka's default transaction timeout (see FetchWatch).
DEFAULT_FETCH_STALL_S = 120.0


def exit_wedged(reason: str) -> None:
    """End the process at once. A normal exit would wait for the thread stuck inside the client."""
    log_event(log, logging.CRITICAL, "kafka_client_wedged", reason=reason, exit_code=WEDGED_EXIT_CODE)
    logging.shutdown()
    os._exit(WEDGED_EXIT_CODE)


class FetchWatch:
    """Notices a consumer that has records to read and reads none.

    `fetched(now)` on every poll that returned records; `check(now, assigned, backlog)` on every turn.
    Once nothing was fetched for `after_s` while partitions are assigned, `backlog()` is asked (a broker
    query: each assigned partition's high watermark minus the consumer's position, or its committed offset
    when it has no position): records waiting means the consumer is stuck, and `wedged` is called; none
    means the stream is just quiet, and the watch starts again.

    Under read_committed a partition's high watermark is ahead of what can be read while a producer's
    transaction is open, for at most that producer's transaction timeout (60 s by default, when a killed
    producer is not restarted): `after_s` must be longer than the upstream producers' transaction timeout,
    or a quiet stream behind a dead producer's transaction would be taken for a stuck consumer.
    """

    def __init__(self, after_s: float, wedged: Callable[[str], None] = exit_wedged) -> None:
        self.after_s = after_s
        self._wedged = wedged
        self._since: float | None = None  # last fetch, or the start of the watch

    def fetched(self, now: float) -> None:
        self._since = now

    def check(self, now: float, assigned: bool, backlog: Callable[[], Mapping[TopicPartition, int] | None]) -> None:
        if self.after_s <= 0:
            return
        if not assigned or self._since is None:
            self._since = now  # nothing to fetch from (yet): the watch starts with the assignment
            return
        if now - self._since < self.after_s:
            return
        waiting = backlog()
        self._since = now  # asked once per period, however the answer comes out
        if not waiting:  # None: the broker did not answer (an outage, not this client's fault)
            return
        stuck = {f"{t}[{p}]": n for (t, p), n in sorted(waiting.items()) if n > 0}
        if stuck:
            self._wedged(f"no record fetched for {self.after_s:.0f} s while assigned partitions hold {stuck}")
