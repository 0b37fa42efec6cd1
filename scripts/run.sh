#!/usr/bin/env bash
# `make run`: migrate, set up the demo, then serve with granian and run a Celery worker with
# an embedded beat. Embedded defaults unless DATABASE_URL / REDIS_URL / CELERY_BROKER_URL say
# otherwise. The banner comes once /health/ready answers; Ctrl-C stops everything started here.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
PORT="${PORT:-8000}"
VAR_DIR="${VAR_DIR:-var}"
export VAR_DIR
export LOG_FORMAT="${LOG_FORMAT:-text}"
export LOG_LEVEL="${LOG_LEVEL:-INFO}"
export DJANGO_DEBUG="${DJANGO_DEBUG:-false}"
# Plain http on localhost: secure-only cookies would never come back (README "HTTPS").
export DJANGO_SECURE_COOKIES="${DJANGO_SECURE_COOKIES:-false}"
BASE="http://127.0.0.1:${PORT}"

if $PY -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1', $PORT)) != 0)"; then
  echo "Port ${PORT} is already in use (another \`make run\`?). Stop it, or: PORT=9000 make run" >&2
  exit 1
fi

mkdir -p "$VAR_DIR/celery/queue" "$VAR_DIR/celery/processed" "$VAR_DIR/static"

# collectstatic copies the same files again on every start; the files come only from installed
# packages (the project has no static folder of its own), so it runs again only when
# requirements.txt changed or `make` reinstalled the virtualenv since the last run.
static_stamp="$VAR_DIR/static/.collected"
collect_pid=
if [[ ! -f "$static_stamp" || requirements.txt -nt "$static_stamp" || .venv/.installed -nt "$static_stamp" ]]; then
  ( $PY manage.py collectstatic --noinput >/dev/null && touch "$static_stamp" ) &
  collect_pid=$!
fi
# Migrations, schedules, the admin user, the demo model and a client token: one Python process
# (each `manage.py` start pays seconds of imports).
bootstrap=$($PY manage.py bootstrap_demo --prepare --client-token demo-client)
token=$(sed -n 's/^CLIENT_TOKEN=//p' <<<"$bootstrap")
grep -v '^CLIENT_TOKEN=' <<<"$bootstrap"
[[ -z "$collect_pid" ]] || wait "$collect_pid"

if [[ -z "${REDIS_URL:-}" ]]; then
  # The embedded local-memory cache lives in one process: one web worker with threads (no more
  # than granian deems sensible for the cores: 2 x cores + 1).
  WEB_WORKERS="${WEB_WORKERS:-1}"; WEB_THREADS="${WEB_THREADS:-$(( $(getconf _NPROCESSORS_ONLN) * 2 + 1 ))}"
else
  WEB_WORKERS="${WEB_WORKERS:-2}"; WEB_THREADS="${WEB_THREADS:-1}"
fi

pids=()
cleanup() {
  trap - INT TERM EXIT
  echo; echo "Stopping..."
  # Each child leads its own process group (set -m below): a signal to the group reaches the
  # worker processes the server and Celery forked, too.
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for _ in $(seq 1 150); do
    alive=
    for pid in "${pids[@]}"; do kill -0 -- "-$pid" 2>/dev/null && alive=1; done
    [[ -z "$alive" ]] && break
    sleep 0.1
  done
  if [[ -n "$alive" ]]; then
    echo "Still running after 15 s: killing what is left (Celery requeues an unfinished task)."
    for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  fi
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT
# Job control: each background job below gets a process group of its own, so Ctrl-C reaches
# only this script, which then stops each group in order (and can be sure nothing is left).
set -m

# The deployment's server script (deploy/serve: granian), on localhost. Django's own access
# line (mlregistry.requests, at LOG_LEVEL) is the request log; granian says only what is wrong.
WEB_HOST=127.0.0.1 PORT="$PORT" WEB_CONCURRENCY="$WEB_WORKERS" WEB_THREADS="$WEB_THREADS" \
  GRANIAN=.venv/bin/granian deploy/serve --log-level warning </dev/null &
pids+=($!)
.venv/bin/celery -A config --quiet worker --beat --loglevel INFO --concurrency 1 \
  --scheduler django_celery_beat.schedulers:DatabaseScheduler </dev/null &
pids+=($!)

# The banner only once the server answers: a pasted curl must not meet a closed port.
ready=
for _ in $(seq 1 600); do
  if ! kill -0 "${pids[0]}" 2>/dev/null; then
    echo "The web server stopped during start-up (see above)." >&2
    exit 1
  fi
  if code=$(curl -s -o /dev/null -w '%{http_code}' "$BASE/health/ready") && [[ "$code" == 200 ]]; then
    ready=1; break
  fi
  sleep 0.1
done
if [[ -z "$ready" ]]; then
  echo "$BASE/health/ready did not answer 200 within 60 s: $(curl -s "$BASE/health/ready")" >&2
fi

admin_user="${DJANGO_SUPERUSER_USERNAME:-admin}"
cat <<MSG

Model Registry is running on ${BASE}/
  Admin:    ${BASE}/admin/   (credentials above; forgot the password?
            .venv/bin/python manage.py changepassword ${admin_user}
            or rerun with DJANGO_SUPERUSER_PASSWORD=... make run, which resets it)
  API docs: ${BASE}/api/docs/
  Health:   ${BASE}/health/ready
  First steps: README.md, "Registry API in one minute"
  Try a prediction:
    curl -s -X POST ${BASE}/api/v1/models/iris-classifier/predict \\
      -H 'Authorization: Bearer ${token}' -H 'Content-Type: application/json' \\
      -d '{"features": {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}}'
Requests are logged below (method, path, status, time). Press Ctrl-C to stop.

MSG
wait -n "${pids[@]}"
