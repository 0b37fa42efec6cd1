# Model Registry: one image for web (granian), worker and beat (celery). See README "Operations".
# bookworm ships postgresql-client 15, the same major version as the compose file's database:
# pg_dump refuses a server newer than itself.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VAR_DIR=/app/var \
    MODEL_STORE_DIR=/data/artifacts \
    BACKUP_DIR=/data/backups \
    PORT=8000

RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home app

WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY --chown=app:app . .
# Static files are collected at build time and served by whitenoise; the key is a build-only one.
RUN DJANGO_SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput \
    && mkdir -p /data/artifacts /data/backups /run/metrics \
    && chown -R app:app /app/var /data /run/metrics

USER app
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u; sys.exit(0 if u.urlopen('http://127.0.0.1:8000/health', timeout=3).status == 200 else 1)"]
CMD ["deploy/serve"]
