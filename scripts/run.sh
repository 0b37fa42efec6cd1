#!/usr/bin/env bash
# `make run`: migrate, set up the demo, then serve with granian and run a Celery worker with
# an embedded beat. Embedded defaults unless DATABASE_URL / REDIS_URL / CELERY_BROKER_URL say
# otherwise. Ctrl-C stops everything this script started.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
PORT="${PORT:-8000}"
export LOG_FORMAT="${LOG_FORMAT:-text}"
export DJANGO_DEBUG="${DJANGO_DEBUG:-false}"
# Plain http on localhost: secure-only cookies would never come back (README "HTTPS").
export DJANGO_SECURE_COOKIES="${DJANGO_SECURE_COOKIES:-false}"

mkdir -p var/celery/queue var/celery/processed
$PY manage.py migrate --noinput >/dev/null
$PY manage.py collectstatic --noinput >/dev/null
$PY manage.py setup_schedules >/dev/null
bootstrap=$($PY manage.py bootstrap_demo)
echo "$bootstrap"
token=$($PY manage.py create_api_token demo-client 2>/dev/null | tail -n 1)

if [[ -z "${REDIS_URL:-}" ]]; then
  # The embedded local-memory cache lives in one process: one web worker with threads.
  WEB_WORKERS="${WEB_WORKERS:-1}"; WEB_THREADS="${WEB_THREADS:-8}"
else
  WEB_WORKERS="${WEB_WORKERS:-2}"; WEB_THREADS="${WEB_THREADS:-1}"
fi

pids=()
cleanup() {
  trap - INT TERM EXIT
  echo; echo "Stopping..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

# The deployment's server script (deploy/serve: granian), on localhost.
WEB_HOST=127.0.0.1 PORT="$PORT" WEB_CONCURRENCY="$WEB_WORKERS" WEB_THREADS="$WEB_THREADS" \
  LOG_LEVEL=warning GRANIAN=.venv/bin/granian deploy/serve &
pids+=($!)
.venv/bin/celery -A config worker --beat --loglevel INFO --concurrency 1 \
  --scheduler django_celery_beat.schedulers:DatabaseScheduler &
pids+=($!)

cat <<MSG

Model Registry is running on http://127.0.0.1:${PORT}/
  Admin:   http://127.0.0.1:${PORT}/admin/   (credentials above)
  API docs http://127.0.0.1:${PORT}/api/docs/
  Health:  http://127.0.0.1:${PORT}/health/ready
  Try a prediction:
    curl -s -X POST http://127.0.0.1:${PORT}/api/v1/models/iris-classifier/predict \\
      -H 'Authorization: Bearer ${token}' -H 'Content-Type: application/json' \\
      -d '{"features": {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}}'
Press Ctrl-C to stop.
MSG
wait -n "${pids[@]}"
