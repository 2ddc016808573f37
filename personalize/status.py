"""``personalize status``: is everything a run needs reachable, and what does Redis hold right now.

Probes the configured addresses (not only the local stack), so it answers for a remote broker or
Redis too. The exit code says whether a job could run: 0 when the broker and Redis answer.
"""

from __future__ import annotations

import socket
from typing import IO, Any

from personalize import cluster
from personalize.dashboard.data import RedisView
from personalize.settings import Settings


def broker_reachable(bootstrap_servers: str, timeout_s: float = 1.0) -> tuple[bool, str]:
    """Whether any bootstrap server accepts a TCP connection (enough to tell "down" from "up")."""
    errors = []
    for server in bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host or "localhost", int(port)), timeout=timeout_s):
                return True, server.strip()
        except (OSError, ValueError) as exc:
            errors.append(f"{server.strip()}: {exc}")
    return False, "; ".join(errors)


def report(settings: Settings) -> dict[str, Any]:
    kafka_up, kafka_detail = broker_reachable(settings.kafka.bootstrap_servers)
    overview = RedisView.connect(settings.redis).overview()
    redis_status = overview["redis"]
    data: dict[str, Any] = {}
    if redis_status["ok"]:
        model = overview["model"] or {}
        data = {
            "users_seen": overview["users_seen"], "memberships": sum(overview["segments"].values()),
            "segments": overview["segments"], "changes_kept": overview["changes"]["length"],
            "rules": len(overview["rules"]), "model_version": model.get("version"),
            "dead_letters": sum((overview["deadletters"] or {}).values()) if overview["deadletters"] else None,
        }
    flink = cluster.status(settings.cluster)
    return {
        "ok": kafka_up and redis_status["ok"],
        "kafka": {"up": kafka_up, "bootstrap_servers": settings.kafka.bootstrap_servers, "detail": kafka_detail},
        "redis": {"up": redis_status["ok"], "url": redis_status["url"], "prefix": settings.redis.key_prefix,
                  "error": redis_status["error"], **data},
        "cluster": {"running": flink["running"], "rest": flink["rest"], "jobs": flink.get("jobs", [])},
    }


def print_report(status: dict[str, Any], out: IO[str]) -> None:
    def mark(up: bool) -> str:
        return "up  " if up else "DOWN"

    kafka, redis_, flink = status["kafka"], status["redis"], status["cluster"]
    print(f"broker   {mark(kafka['up'])} {kafka['bootstrap_servers']}"
          + ("" if kafka["up"] else f"  ({kafka['detail']}; `personalize stack up` starts a local one)"), file=out)
    print(f"redis    {mark(redis_['up'])} {redis_['url']}"
          + ("" if redis_["up"] else f"  ({redis_['error']}; `personalize stack up` starts a local one)"), file=out)
    if redis_["up"]:
        if not (redis_["users_seen"] or redis_["rules"]):
            print(f"         no data under prefix {redis_['prefix']!r} yet (run the job: `personalize demo`)", file=out)
        else:
            print(f"         {redis_['users_seen']:,} users seen, {redis_['memberships']:,} segment memberships, "
                  f"{redis_['changes_kept']:,} recent changes, {redis_['rules']} rules, "
                  f"model version {redis_['model_version'] or 'n/a'}", file=out)
    jobs = ", ".join(f"{job['name']} {job['state']}" for job in flink["jobs"]) or "no jobs"
    print(f"cluster  {'up  ' if flink['running'] else 'off '} {flink['rest']}"
          + (f"  ({jobs})" if flink["running"] else "  (optional: `personalize cluster up`)"), file=out)
