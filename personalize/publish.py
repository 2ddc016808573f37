"""Publish generated records to Kafka, or keep them in JSONL files for replays without a broker.

``publish`` returns the exact end offset of every partition it wrote to, taken from the brokers'
acknowledgements: bounded jobs replay exactly what was published, whatever else arrives later.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from kafka import KafkaProducer
from kafka.partitioner.default import murmur2

from personalize.generator import GeneratedRecord
from personalize.settings import KafkaSettings

PROGRESS_INTERVAL_S = 0.1


class PublishError(RuntimeError):
    """A record could not be delivered; nothing after the first failure is trusted."""


@dataclass(frozen=True)
class PublishResult:
    count: int
    end_offsets: dict[str, dict[int, int]]
    """topic -> partition -> last acknowledged offset + 1."""
    seconds: float


class Progress:
    """A dependency-free progress line on a TTY, redrawn at most every ``interval_s``; else only a summary."""

    def __init__(self, total: int | None, label: str, stream: IO[str] | None = None,
                 interval_s: float = PROGRESS_INTERVAL_S) -> None:
        self.total = total
        self.label = label
        self.stream = sys.stderr if stream is None else stream
        self.interval_s = interval_s
        self.live = self.stream.isatty()
        self.started = time.monotonic()
        self._drawn = 0.0

    def update(self, done: int) -> None:
        if not self.live:
            return
        now = time.monotonic()
        if now - self._drawn < self.interval_s:
            return
        self._drawn = now
        rate = done / max(now - self.started, 1e-9)
        if self.total:
            filled = int(30 * min(done, self.total) / self.total)
            bar = f"[{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total}"
        else:
            bar = str(done)
        self.stream.write(f"\r{self.label} {bar} {rate:,.0f}/s")
        self.stream.flush()

    def close(self, done: int) -> None:
        seconds = time.monotonic() - self.started
        prefix = "\r\x1b[K" if self.live else ""
        self.stream.write(f"{prefix}{self.label} {done} records in {seconds:.1f} s "
                          f"({done / max(seconds, 1e-9):,.0f}/s)\n")
        self.stream.flush()


def keyless_partition(producer: KafkaProducer, topic: str, value: bytes) -> int:
    """A record without a key goes to a partition chosen by its bytes: the client's default picks one at
    random, and a seeded replay must land on the same partitions and offsets every time (dead letters
    are identified by topic, partition and offset)."""
    partitions = sorted(producer.partitions_for(topic))
    return partitions[(murmur2(value) & 0x7FFFFFFF) % len(partitions)]


def publish(records: Iterable[GeneratedRecord], kafka: KafkaSettings, progress: bool = True,
            total: int | None = None, rate: float | None = None,
            on_send: Callable[[GeneratedRecord, float], None] | None = None) -> PublishResult:
    """Send every record to its role's topic with the record's timestamp; raise on any failed send.

    ``rate`` paces the sends (records per second, for latency measurements at a fixed offered load);
    ``on_send`` hears of every record with the wall-clock time (epoch seconds) it was handed to Kafka.
    """
    topics = {role: topic.name for role, topic in vars(kafka.topics).items()}
    end_offsets: dict[str, dict[int, int]] = {}
    failures: list[BaseException] = []
    acknowledged = 0

    def delivered(metadata: Any) -> None:
        nonlocal acknowledged
        acknowledged += 1
        partitions = end_offsets.setdefault(metadata.topic, {})
        if metadata.offset >= partitions.get(metadata.partition, 0):
            partitions[metadata.partition] = metadata.offset + 1

    bar = Progress(total, "publish") if progress else None
    started = time.monotonic()
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all", linger_ms=5,
                             batch_size=65_536, compression_type=None)
    count = 0
    try:
        for record in records:
            if failures:
                break
            if rate:
                ahead = started + count / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            topic = topics[record.topic_role]
            partition = None if record.key is not None else keyless_partition(producer, topic, record.value)
            future = producer.send(topic, value=record.value, key=record.key, partition=partition,
                                   timestamp_ms=record.ts)
            if on_send is not None:
                on_send(record, time.time())
            future.add_callback(delivered)
            future.add_errback(failures.append)
            count += 1
            if bar is not None and count % 256 == 0:
                bar.update(count)
        producer.flush()
    finally:
        producer.close()
    if failures:
        raise PublishError(f"{len(failures)} record(s) failed, first: {failures[0]!r}") from failures[0]
    if acknowledged != count:
        raise PublishError(f"sent {count} records but only {acknowledged} were acknowledged")
    if bar is not None:
        bar.close(count)
    return PublishResult(count=count, end_offsets=end_offsets, seconds=time.monotonic() - started)


def _jsonl_line(record: GeneratedRecord) -> str:
    line: dict[str, Any] = {"topic_role": record.topic_role,
                            "key": None if record.key is None else record.key.decode()}
    try:
        line["value"] = record.value.decode()
    except UnicodeDecodeError:
        line["value_b64"] = base64.b64encode(record.value).decode("ascii")
    line["ts"] = record.ts
    line["kind"] = record.kind
    return json.dumps(line, separators=(",", ":"))


def write_jsonl(records: Iterable[GeneratedRecord], path: str | Path) -> int:
    """Write one JSON line per record (bytes that are not UTF-8 as base64); returns the count."""
    count = 0
    with Path(path).open("w", encoding="utf-8") as out:
        for record in records:
            out.write(_jsonl_line(record) + "\n")
            count += 1
    return count


#: Topics a replay may write: the inputs and the rule commands. The job's own topics (model snapshots,
#: the identity loop) are written by the job alone (docs/security.md).
REPLAY_ROLES = ("behavior", "profile", "consent", "tracking", "rules")


class ReplayFileError(ValueError):
    """A replay file that is not what ``personalize produce --jsonl`` writes; the message names the line."""


def read_jsonl(path: str | Path) -> Iterator[GeneratedRecord]:
    """Records exactly as written by :func:`write_jsonl`; :class:`ReplayFileError` naming the line of
    anything else (not JSON, missing or wrong fields, a topic role a replay may not write)."""
    with Path(path).open(encoding="utf-8", errors="strict") as lines:
        number = 0
        try:
            for number, line in enumerate(lines, start=1):  # noqa: B007 (named in the error below)
                if line.strip():
                    yield _jsonl_record(json.loads(line))
        except UnicodeDecodeError:
            raise ReplayFileError(f"{path}: line {number + 1}: not UTF-8 text") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ReplayFileError(f"{path}: line {number}: not a record written by `personalize produce --jsonl` "
                               f"({type(exc).__name__}: {str(exc)[:120]})") from None


def _jsonl_record(doc: Any) -> GeneratedRecord:
    if not isinstance(doc, dict):
        raise TypeError("expected a JSON object")
    role = doc["topic_role"]
    if role not in REPLAY_ROLES:
        raise ValueError(f"topic_role {str(role)[:40]!r} is not one of {', '.join(REPLAY_ROLES)}")
    value = doc["value"].encode() if "value" in doc else base64.b64decode(doc["value_b64"], validate=True)
    key, ts = doc["key"], doc["ts"]
    if (key is not None and not isinstance(key, str)) or isinstance(ts, bool) or not isinstance(ts, int):
        raise TypeError("key must be a string or null and ts an integer")
    return GeneratedRecord(role, None if key is None else key.encode(), value, ts, str(doc.get("kind", "")))


def write_personas(personas: dict[str, str], path: str | Path) -> None:
    Path(path).write_text(json.dumps(personas, indent=2, sort_keys=True) + "\n", encoding="utf-8")
