"""The worker's watch on its own consumer-group membership: a member that has stopped being a live, joined
member for much longer than any rebalance takes is replaced by a fresh consumer.

On Apache Kafka, a kafka-python 3.0.12 member can get stuck after a rebalance: a group leader that rejoins right
after its first assignment may never finish that rejoin on its side (the broker has the new generation's
assignment; the client never applies it, spins on the coordinator lookup, sends no heartbeats and is dropped
from the group), so it owns no partitions and never polls a record again while ``poll()`` keeps returning
empty. :func:`messaging.clients.make_worker_consumer` avoids that needless rejoin; this watch covers whatever
else leaves a member stuck. A new ``KafkaConsumer`` (new connections, new member id) joins normally. Replacing
one loses nothing: offsets are committed only after a batch's results are acknowledged, so whatever the stuck
member held uncommitted is read again from the last commit by the partition's next owner.
"""

from __future__ import annotations

import logging
import time

from kafka import KafkaConsumer
from kafka.structs import MemberState

logger = logging.getLogger(__name__)

#: A member not joined (or without a heartbeat answer) for this many session timeouts is replaced. A
#: rebalance finishes within one session timeout (dead members are dropped after it) plus one batch (live
#: members rejoin at their next poll), far below this.
STALL_SESSION_TIMEOUTS = 5


def last_heartbeat_answer_age_s(consumer: KafkaConsumer) -> float | None:
    """Seconds since the group coordinator last answered a heartbeat (or since the member joined, whichever is
    later); None where the client does not say."""
    # kafka-python keeps this on its coordinator's Heartbeat object (no public accessor in 3.0.12).
    heartbeat = getattr(getattr(consumer, "_coordinator", None), "heartbeat", None)
    if heartbeat is None:
        return None
    return time.monotonic() - max(heartbeat.last_receive, heartbeat.last_reset)


def member_is_live(consumer: KafkaConsumer, session_timeout_ms: int) -> bool:
    """True when the consumer is a joined (stable) group member with no rejoin pending whose heartbeats the
    coordinator answered within the last session timeout. A stable member with no partitions (more members than
    partitions) is live."""
    if consumer.group_metadata().state != MemberState.STABLE:
        return False
    # A member that must rejoin (its assignment's metadata changed, or the coordinator asked) stays STABLE in
    # kafka-python until the JoinGroup goes out; stuck in the coordinator lookup before that, it never leaves
    # STABLE. need_rejoin() has no public accessor in 3.0.12.
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is not None and coordinator.need_rejoin():
        return False
    age = last_heartbeat_answer_age_s(consumer)
    return age is None or age <= session_timeout_ms / 1000


class MembershipWatch:
    """Tracks how long the worker's consumer has not been a live group member.

    Args:
        session_timeout_ms: the consumer's session timeout; the stall limit is ``STALL_SESSION_TIMEOUTS`` of
            them.
    """

    def __init__(self, session_timeout_ms: int) -> None:
        self.session_timeout_ms = session_timeout_ms
        self.limit_s = STALL_SESSION_TIMEOUTS * session_timeout_ms / 1000
        self.live_at = time.monotonic()
        self.replacements = 0

    def restart(self) -> None:
        """Start the clock again (a new consumer gets the full limit to join)."""
        self.live_at = time.monotonic()

    def stalled(self, consumer: KafkaConsumer) -> bool:
        """Check the consumer (call once per loop); True once it has not been live for longer than the limit."""
        now = time.monotonic()
        if member_is_live(consumer, self.session_timeout_ms):
            self.live_at = now
            return False
        return now - self.live_at > self.limit_s

    def describe(self, consumer: KafkaConsumer) -> str:
        """One line for the log: the member's state and heartbeat age."""
        meta = consumer.group_metadata()
        age = last_heartbeat_answer_age_s(consumer)
        heartbeat = "unknown" if age is None else f"{age:.1f} s ago"
        return (f"state {meta.state}, generation {meta.generation_id}, last heartbeat answer {heartbeat}, "
                f"not live for {time.monotonic() - self.live_at:.1f} s")
