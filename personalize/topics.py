"""Create the job's topics on Apache Kafka from the project's settings: ``python -m personalize.topics``
(the topic-init step of docker/docker-compose.yml; the local stack creates its topics itself).

The topic list and partition counts come from ``config/defaults.yaml`` plus any override (a file
given with ``--config``, ``PERSONALIZE__...`` variables), exactly as the job reads them, so the
deployment cannot drift from the configuration. Existing topics are left alone, but a partition
count that differs is an error: the job partitions users by key.
"""

from __future__ import annotations

import argparse
import sys
import time

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from personalize import settings as settings_module


def create_topics(bootstrap_servers: str, wanted: dict[str, int], replication: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:  # the broker may still be starting
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="personalize-topic-init")
            break
        except KafkaError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    try:
        for name, partitions in wanted.items():
            try:
                admin.create_topics([NewTopic(name, partitions, replication)])
                print(f"created {name} ({partitions} partitions)")
            except TopicAlreadyExistsError:
                print(f"exists  {name}")
        described = {topic["name"]: len(topic["partitions"])
                     for topic in admin.describe_topics(list(wanted)) if topic["error_code"] == 0}
        wrong = {name: (described.get(name), count) for name, count in wanted.items() if described.get(name) != count}
        if wrong:
            raise SystemExit(f"topics with other partition counts than configured (have, want): {wrong}")
    finally:
        admin.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", help="YAML file overriding config/defaults.yaml")
    parser.add_argument("--replication-factor", type=int, default=1)
    parser.add_argument("--timeout-s", type=float, default=120)
    args = parser.parse_args(argv)
    settings = settings_module.load(args.config)
    wanted = {topic.name: topic.partitions for topic in settings.kafka.topics.all()}
    create_topics(settings.kafka.bootstrap_servers, wanted, args.replication_factor, args.timeout_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
