"""What every process counts for Prometheus (prometheus_client): token requests in the web processes, refreshes
wherever they happen (workers, or a web process refreshing for a bot). With METRICS_TOKEN set, settings point
PROMETHEUS_MULTIPROC_DIR at a directory before this module is imported, and each process keeps its counts in files
there that GET /metrics sums (connections.ops.scrape). No label holds a secret: outcomes are the token
endpoint's error codes or a refresh's kind of result, providers are provider-type slugs.
"""

import glob
import os
import socket

from prometheus_client import Counter, Gauge, Histogram, multiprocess, values
from prometheus_client.mmap_dict import MmapedDict

# Containers sharing the directory each number their processes from 1: the host name keeps their files apart.
_host = socket.gethostname().replace("_", "-")


def process_identifier(pid: int) -> str:
    """What a process's files are named by (prometheus_client's {kind}_{identifier}.db)."""
    return f"{_host}-{pid}"


if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    values.ValueClass = values.MultiProcessValue(process_identifier=lambda: process_identifier(os.getpid()))

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
# By provider type, not by connection: a label a connection would give a series to each of up to a million
# connections (the audit log has each call, by connection).
PROXY_REQUESTS = Counter(
    "controlroom_proxy_requests",
    "Calls of the API proxy, by provider type (empty: refused before a connection was found) and status class.",
    ["provider", "status_class"],
)
AUDIT_EVENTS_QUEUED = Gauge(
    "controlroom_audit_events_queued",
    "Audit events of answered token requests that web processes hold until their next report writes them.",
    multiprocess_mode="livesum",
)


def token_request_counted(outcome: str, *, from_memory: bool) -> None:
    TOKEN_REQUESTS.labels(outcome=outcome, from_memory="true" if from_memory else "false").inc()


def proxy_request_counted(provider: str, status: int) -> None:
    PROXY_REQUESTS.labels(provider=provider, status_class=f"{status // 100}xx").inc()


def refresh_counted(provider: str, outcome: str, seconds: float) -> None:
    REFRESHES.labels(provider=provider, outcome=outcome).inc()
    REFRESH_SECONDS.labels(provider=provider).observe(seconds)


def task_failure_counted(task: str) -> None:
    TASK_FAILURES.labels(task=task).inc()


def refresh_result_lost_counted(provider: str) -> None:
    REFRESH_RESULTS_LOST.labels(provider=provider).inc()


# --- The multiprocess directory (gunicorn.conf.py's hooks) -------------------------------------------------------


def process_exited(pid: int, directory: str) -> None:
    """A web process of this host ended (gunicorn's child_exit): its live gauges go (prometheus_client's
    mark_process_dead, by the identifier its files are named by), and its counters and histograms are added into
    this host's one file of retired processes, so that a scrape reads the files of the processes alive and that
    one, not of every process ever restarted (max_requests restarts them all day)."""
    identifier = process_identifier(pid)
    multiprocess.mark_process_dead(identifier, directory)
    for kind in ("counter", "histogram"):
        dead = os.path.join(directory, f"{kind}_{identifier}.db")
        if not os.path.exists(dead):
            continue
        retired = MmapedDict(os.path.join(directory, f"{kind}_{_host}-retired.db"))
        try:
            for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(dead):
                retired.write_value(key, retired.read_value(key)[0] + value, timestamp)
        finally:
            retired.close()
        os.remove(dead)


def directory_tidied(directory: str) -> None:
    """At the web server's start: the files this host's processes left that no process runs any more (gunicorn
    killed, a container restarted) go, and the retired processes' file too when none of this host's runs any more;
    another host's files, and those of this host's live processes (a Celery worker beside it), stay."""
    paths = glob.glob(os.path.join(directory, f"*_{_host}-*.db"))
    retired = [path for path in paths if path.endswith("-retired.db")]
    live = False
    for path in set(paths) - set(retired):
        pid = os.path.basename(path).removesuffix(".db").rsplit("-", 1)[-1]
        if pid.isdigit() and _running(int(pid)):
            live = True
        else:
            os.remove(path)
    if not live:
        for path in retired:
            os.remove(path)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
