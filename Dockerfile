# Control Room: one image for the web server, the Celery workers and Celery beat.
#
#   docker build -t controlroom:1.4.0 .       # tag each build with its release, to roll back to the previous one
#
# docker-compose.yml runs it scaled out (PostgreSQL, Redis, web, N workers, two beats); docs/operations.md, "Production",
# explains it. Without compose, the same containers by hand, all with the same environment file:
#   docker run --env-file .env --rm controlroom python manage.py migrate --no-input   # once per release, first
#   docker run --env-file .env --rm controlroom python manage.py ensure_admin         # the first administrator
#   docker run --env-file .env -p 8000:8000 controlroom                               # web (the default command)
#   docker run --env-file .env --no-healthcheck controlroom celery --app controlroom worker --loglevel INFO
#   docker run --env-file .env --no-healthcheck controlroom celery --app controlroom beat --loglevel INFO
# Workers: as many as you like. Beats: two (or more), on different machines; each periodic job runs once a period.
#
# .env needs at least SECRET_KEY, CRYPTOGRAPHY_KEY, PUBLIC_URL, and — because every container has its own
# VAR_DIR — DATABASE_URL (PostgreSQL) and REDIS_URL, so that web, workers and beat share one database and one
# broker. .env.example lists every variable.

# For a build that can be repeated byte for byte, pin the base image by its digest as well, and move it on purpose
# (security updates): `docker buildx imagetools inspect python:3.11-slim-bookworm` prints the current one, then
# FROM python:3.11-slim-bookworm@sha256:<digest>.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VAR_DIR=/var/lib/controlroom

# A fixed numeric user, so that orchestrators can check "runAsNonRoot" and volumes can be given to it.
RUN groupadd --system --gid 10001 controlroom \
    && useradd --system --uid 10001 --gid controlroom --home-dir /app --shell /usr/sbin/nologin controlroom \
    && mkdir -p /app "$VAR_DIR" \
    && chown controlroom:controlroom "$VAR_DIR"

WORKDIR /app

# Dependencies first, so that a code change does not reinstall them: every one, the transitive ones too, as the
# lock file pins it, checked against its hashes (`make lock` regenerates it from requirements.txt).
COPY requirements.lock .
RUN pip install --no-cache-dir --require-hashes -r requirements.lock

# The code stays owned by root: the application cannot change itself. Only VAR_DIR is writable (beat's schedule).
COPY . .

# Static files are collected into the image (/app/staticfiles, served by WhiteNoise), as root before dropping
# privileges. The settings refuse to load with DEBUG=false unless both keys are set, so this RUN line alone
# gets throwaway ones; they are not kept in the image. ENV_FILE= makes sure no .env file is read.
RUN ENV_FILE= DEBUG=false SECRET_KEY=collectstatic-only-not-a-secret \
    CRYPTOGRAPHY_KEY=collectstatic-only-not-a-secret-either \
    python manage.py collectstatic --no-input --verbosity 0

USER 10001:10001

EXPOSE 8000

# /livez answers 200 while the process serves requests; it does no I/O, so only a stuck or dead web process fails
# it (the only thing a restart fixes). A load balancer asks /readyz (database and cache); alerting asks /healthz
# (beat, workers, refresh backlog too). All three are exempt from the https redirect; the check sends PUBLIC_URL's
# host as Host, to pass ALLOWED_HOSTS. Worker and beat containers serve no HTTP: run them with --no-healthcheck
# (compose: healthcheck: disable: true).
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.parse, urllib.request; host = urllib.parse.urlsplit(os.environ.get('PUBLIC_URL') or 'http://127.0.0.1').netloc; request = urllib.request.Request('http://127.0.0.1:8000/livez', headers={'Host': host, 'X-Forwarded-Proto': 'https'}); sys.exit(0 if urllib.request.urlopen(request, timeout=8).status == 200 else 1)"]

# The web server; its settings (processes, threads, timeouts, graceful restarts) are in gunicorn.conf.py.
CMD ["gunicorn", "--config", "gunicorn.conf.py"]
