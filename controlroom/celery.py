"""The Celery app, configured from Django settings (CELERY_* names), with the beat schedule defined in code."""

import logging.config
import os

from celery import Celery
from celery.signals import beat_init, setup_logging, task_postrun, task_prerun

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlroom.settings")

app = Celery("controlroom")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_configure.connect
def add_beat_schedule(sender: Celery, **kwargs: object) -> None:
    from django.conf import settings

    # Any number of beats may run this schedule: each job claims its period before it does anything, so one copy a
    # period runs (connections.ops.periods). A job here with an interval other than BEAT_INTERVAL gives it to its
    # @once_per_period too.
    sender.add_periodic_task(
        settings.BEAT_INTERVAL, sender.signature("connections.tasks.beat_heartbeat"), name="beat heartbeat"
    )
    # Each sweep is cheap (one indexed query) and queues a task per token due before the next sweep.
    sender.add_periodic_task(
        settings.BEAT_INTERVAL, sender.signature("connections.tasks.refresh_sweep"), name="token refresh sweep"
    )
    sender.add_periodic_task(
        settings.BEAT_INTERVAL,
        sender.signature("connections.tasks.audit_failed_authentications_summarize"),
        name="failed authentications summary",
    )
    sender.add_periodic_task(
        settings.BEAT_INTERVAL,
        sender.signature("connections.tasks.credential_expiry_warn"),
        name="credential expiry warnings",  # run hourly: the task claims an hour's period
    )
    # The token change log the web processes read: rows past a minute old go (connections.cache.change_log).
    sender.add_periodic_task(
        settings.BEAT_INTERVAL, sender.signature("connections.tasks.token_changes_prune"), name="token change log prune"
    )
    # Every 10 minutes: small batches for 4 minutes at most a run (connections.audit.retention); when nothing is
    # due, one indexed query.
    sender.add_periodic_task(600.0, sender.signature("connections.tasks.audit_prune"), name="audit retention pruning")
    # The dashboard's figures over every connection and a day of refreshes (connections.web.dashboard.SUMMARY_EVERY).
    sender.add_periodic_task(120.0, sender.signature("connections.tasks.dashboard_summarize"), name="dashboard summary")


@setup_logging.connect
def log_as_django_does(**kwargs: object) -> None:
    """Workers and beat log through Django's LOGGING, redacting formatter included, at LOG_LEVEL. Without this
    receiver Celery replaces the root logger's handlers with its own, which print a token in clear (and its
    --loglevel option would apply instead of LOG_LEVEL)."""
    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)


@beat_init.connect
def announce_beat_start(sender: object, **kwargs: object) -> None:
    # Interval entries first fire one interval after start; send a heartbeat now so /healthz turns green
    # as soon as beat and a worker are up.
    app.send_task("connections.tasks.beat_heartbeat")


@task_prerun.connect
@task_postrun.connect
def database_connections_checked(sender: object = None, **kwargs: object) -> None:
    """Around each task, what Django does around each request: a connection that broke (the database restarted,
    failed over, or dropped it) or outlived DATABASE_CONN_MAX_AGE is closed, and one kept is checked before its
    next use (CONN_HEALTH_CHECKS), so the next task opens a new one. Celery's own Django fixup would close every
    connection around every task instead; CELERY_DB_REUSE_MAX (settings) keeps it from doing so, and without
    this a connection broken once stayed broken in that worker process for its next thousand tasks."""
    from django.db import close_old_connections, connection

    # A task run in the caller's own process (eager, as the tests run some) is part of the caller's work, and
    # perhaps of its transaction: that connection is the caller's to look after.
    if getattr(getattr(sender, "request", None), "is_eager", False) or connection.in_atomic_block:
        return
    close_old_connections()
