from celery import shared_task

from connections import services


@shared_task(name="connections.tasks.beat_heartbeat", ignore_result=True)
def beat_heartbeat() -> None:
    """Scheduled by beat, run by a worker: proves beat, the broker and a worker all work (/healthz)."""
    services.beat_heartbeat_record()
