# Control Room: one image for the web server, the Celery worker and Celery beat.
#
#   docker build -t controlroom .
#
# Web (the default command), on port 8000 behind your TLS-terminating proxy:
#   docker run --env-file prod.env -p 8000:8000 controlroom
# Worker (as many as you like) and beat (exactly one), same image and same environment:
#   docker run --env-file prod.env --no-healthcheck controlroom celery --app controlroom worker --loglevel INFO
#   docker run --env-file prod.env --no-healthcheck controlroom celery --app controlroom beat --loglevel INFO --schedule /tmp/celerybeat-schedule
# Database migrations (once per release, before starting the new web processes; also loads the provider catalog)
# and the first administrator:
#   docker run --env-file prod.env --rm controlroom python manage.py migrate --no-input
#   docker run --env-file prod.env --rm controlroom python manage.py ensure_admin
#
# prod.env needs at least SECRET_KEY, CRYPTOGRAPHY_KEY, PUBLIC_URL, and — because every container has its own
# VAR_DIR — DATABASE_URL (PostgreSQL) and REDIS_URL, so that web, worker and beat share one database and one
# broker. See .env.example for every variable.

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VAR_DIR=/var/lib/controlroom

RUN groupadd --system controlroom \
    && useradd --system --gid controlroom --home-dir /app --shell /usr/sbin/nologin controlroom \
    && mkdir -p /app "$VAR_DIR" \
    && chown controlroom:controlroom "$VAR_DIR"

WORKDIR /app

# Dependencies first, so that a code change does not reinstall them. requirements.txt pins every one with ==.
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY . .

# Static files are collected into the image (/app/staticfiles, served by WhiteNoise), as root before dropping
# privileges. The settings refuse to load with DEBUG=false unless both keys are set, so this RUN line alone
# gets throwaway ones; they are not kept in the image. ENV_FILE= makes sure no .env file is read.
RUN ENV_FILE= DEBUG=false SECRET_KEY=collectstatic-only-not-a-secret \
    CRYPTOGRAPHY_KEY=collectstatic-only-not-a-secret-either \
    python manage.py collectstatic --no-input --verbosity 0

USER controlroom

EXPOSE 8000

# /healthz answers 200 when the database, the broker and beat are all fine, 503 otherwise (so the web container
# turns unhealthy while beat or every worker is down). /healthz is exempt from the https redirect; the check
# sends PUBLIC_URL's host as Host, to pass ALLOWED_HOSTS.
# Worker and beat containers serve no HTTP: run them with --no-healthcheck (compose: healthcheck: disable: true).
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.parse, urllib.request; host = urllib.parse.urlsplit(os.environ.get('PUBLIC_URL') or 'http://127.0.0.1').netloc; request = urllib.request.Request('http://127.0.0.1:8000/healthz', headers={'Host': host, 'X-Forwarded-Proto': 'https'}); sys.exit(0 if urllib.request.urlopen(request, timeout=8).status == 200 else 1)"]

CMD ["gunicorn", "controlroom.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "3", "--no-control-socket"]
