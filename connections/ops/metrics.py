"""What every process counts for Prometheus (prometheus_client): token requests in the web processes, refreshes
wherever they happen (workers, or a web process refreshing for a bot). With METRICS_TOKEN set, settings point
PROMETHEUS_MULTIPROC_DIR at a directory before this module is imported, and each process keeps its counts in files
there that GET /metrics sums (connections.ops.scrape). No label holds a secret: outcomes are the token
endpoint's error codes or a refresh's kind of result, providers are provider-type slugs.
"""

import os
import socket

from prometheus_client import Counter, Gauge, Histogram, values

if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # Containers sharing the directory each number their processes from 1: the host name keeps their files apart.
    _host = socket.gethostname().replace("_", "-")
    values.ValueClass = values.MultiProcessValue(process_identifier=lambda: f"{_host}-{os.getpid()}")

TOKEN_REQUESTS = Counter(
    "controlroom_token_requests",
    "Answers of the token endpoint, by outcome (issued, or the error code) and whether memory gave them.",
    ["outcome", "from_memory"],
)
REFRESHES = Counter(
    "controlroom_token_refreshes",
    "Token refreshes at the provider, by provider type and outcome (success, transient, permanent, rate_limited).",
    ["provider", "outcome"],
)
REFRESH_SECONDS = Histogram(
    "controlroom_token_refresh_seconds",
    "How long the provider took to answer a refresh, by provider type.",
    ["provider"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30),
)
REFRESH_RESULTS_LOST = Counter(
    "controlroom_refresh_results_lost",
    "Refreshes the provider answered whose result the database would not take (a rotated refresh token lost): "
    "alert on any.",
    ["provider"],
)
TASK_FAILURES = Counter(
    "controlroom_task_failures",
    "Scheduled work that failed as a whole, by task: the refresh sweep, a worker's batch of refreshes.",
    ["task"],
)
AUDIT_EVENTS_QUEUED = Gauge(
    "controlroom_audit_events_queued",
    "Audit events of answered token requests that web processes hold until their next report writes them.",
    multiprocess_mode="livesum",
)


def token_request_counted(outcome: str, *, from_memory: bool) -> None:
    TOKEN_REQUESTS.labels(outcome=outcome, from_memory="true" if from_memory else "false").inc()


def refresh_counted(provider: str, outcome: str, seconds: float) -> None:
    REFRESHES.labels(provider=provider, outcome=outcome).inc()
    REFRESH_SECONDS.labels(provider=provider).observe(seconds)


def task_failure_counted(task: str) -> None:
    TASK_FAILURES.labels(task=task).inc()


def refresh_result_lost_counted(provider: str) -> None:
    REFRESH_RESULTS_LOST.labels(provider=provider).inc()
