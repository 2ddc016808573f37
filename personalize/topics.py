"""Create the job's topics on Apache Kafka from the project's settings: ``python -m personalize.topics``
(the topic-init step of docker/docker-compose.yml; the local stack calls :func:`create_topics` too).

The topic list, partition counts and topic configs (``cleanup.policy``, ``retention.ms``) come from
``config/defaults.yaml`` plus any override (a file given with ``--config``, ``PERSONALIZE__...``
variables), exactly as the job reads them, so the deployment cannot drift from the configuration.
Existing topics are left alone, but a partition count that differs is an error: the job partitions
users by key.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from personalize import settings as settings_module
from personalize.settings import Topic

POLL_S = 0.1


class TopicError(RuntimeError):
    """The topics cannot be created as configured; the message says why."""


def create_topics(admin: KafkaAdminClient, topics: Sequence[tuple[Topic, Mapping[str, str]]], replication: int,
                  timeout_s: float) -> list[str]:
    """Create the missing ``topics`` with their configs and wait until each has its partition count;
    returns the names created. A topic still being deleted is retried until ``timeout_s``."""
    wanted = {topic.name: topic.partitions for topic, _ in topics}
    deadline = time.monotonic() + timeout_s
    created: list[str] = []
    while True:
        existing = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(list(wanted))
                    if t["error_code"] == 0}
        wrong = {name: count for name, count in existing.items() if count != wanted[name]}
        if wrong:
            detail = ", ".join(f"{name} has {count} (configured: {wanted[name]})" for name, count in wrong.items())
            raise TopicError(f"topics with another partition count than configured: {detail}")
        missing = [(topic, config) for topic, config in topics if topic.name not in existing]
        if not missing:
            return created
        if time.monotonic() >= deadline:
            raise TopicError(f"topics not created within {timeout_s:g} s: {', '.join(t.name for t, _ in missing)}")
        for topic, config in missing:  # one by one: a topic still being deleted fails alone
            with suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(topic.name, topic.partitions, replication,
                                              topic_configs=dict(config))])
                created.append(topic.name)
        time.sleep(POLL_S)


def connect(bootstrap_servers: str, timeout_s: float) -> KafkaAdminClient:
    """An admin client, retrying while the broker is still starting."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return KafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="personalize-topic-init")
        except KafkaError:
            if time.monotonic() > deadline:
                raise TopicError(f"no Kafka broker answered at {bootstrap_servers} within {timeout_s:g} s") from None
            time.sleep(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", help="YAML file overriding config/defaults.yaml")
    parser.add_argument("--replication-factor", type=int, default=1)
    parser.add_argument("--timeout-s", type=float, default=120)
    args = parser.parse_args(argv)
    settings = settings_module.load(args.config)
    topics = [(topic, topic.config) for topic in settings.kafka.topics.all()]
    try:
        admin = connect(settings.kafka.bootstrap_servers, args.timeout_s)
        try:
            created = create_topics(admin, topics, args.replication_factor, args.timeout_s)
        finally:
            admin.close()
    except (TopicError, KafkaError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for topic, _ in topics:
        print(f"{'created' if topic.name in created else 'exists ':7} {topic.name} ({topic.partitions} partitions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
