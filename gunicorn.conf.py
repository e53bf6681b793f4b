"""gunicorn's settings for Control Room's web server: the Dockerfile's default command and docker-compose.yml's
web service both run `gunicorn --config gunicorn.conf.py`; this is the one place they are written."""

wsgi_app = "controlroom.wsgi:application"
bind = "0.0.0.0:8000"

# 3 processes x 4 threads: a request waiting on a slow provider (up to OUTBOUND_TIMEOUT, or REFRESH_WAIT_SECONDS
# for another process's refresh) holds a thread, not a whole process. About two processes per core.
workers = 3
threads = 4

# A worker silent for this long is restarted: well above the longest wait of a request (about 25 s).
timeout = 60
# On a restart or a stop, requests in flight get this long to finish, and each worker reports the token answers
# it served from memory (connections.cache.token_cache). docker-compose.yml gives web a longer stop_grace_period.
graceful_timeout = 30
# A worker is replaced after this many requests (jitter spreads the restarts): a slow leak cannot grow for ever.
max_requests = 5000
max_requests_jitter = 500

# No access log: the OAuth callback's query string carries the authorization code.
accesslog = None
# gunicorn 27 otherwise opens ~/.gunicorn/gunicorn.ctl, shared by every instance on the host.
control_socket_disable = True


# GET /metrics (METRICS_TOKEN set): every process keeps its counts in files of one directory. The master tidies the
# files dead processes left when it starts, and folds each worker's into one file when it exits (a worker replaced
# after max_requests would otherwise leave files that every scrape reads for ever).
def on_starting(server: object) -> None:
    from controlroom.env import metrics_directory

    if directory := metrics_directory():
        from connections.ops import metrics

        metrics.directory_tidied(directory)


def child_exit(server: object, worker: object) -> None:
    from controlroom.env import metrics_directory

    if directory := metrics_directory():
        from connections.ops import metrics

        metrics.process_exited(worker.pid, directory)  # type: ignore[attr-defined]
