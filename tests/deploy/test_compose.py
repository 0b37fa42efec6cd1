"""No Docker engine here: the compose file is checked against what the code actually reads."""

import os
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
APP_SERVICES = ("migrate", "web", "worker", "beat")
LONG_RUNNING = [name for name, s in SERVICES.items() if s.get("restart") != "no"]

# Read by libraries rather than by our code.
READ_BY_LIBRARIES = {
    "PROMETHEUS_MULTIPROC_DIR",
    # boto3's standard credential chain (django-storages' S3 backend)
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
}

_ENV_READ = re.compile(
    r"""(?:env_(?:str|bool|int|float|list)|os\.environ\.get|os\.getenv)\(\s*["']([A-Z0-9_]+)["']"""
)


_SHELL_READ = re.compile(r"\$\{([A-Z0-9_]+)")


def _variables_the_code_reads() -> set[str]:
    names: set[str] = set()
    for path in [*ROOT.glob("config/*.py"), ROOT / "deploy" / "gunicorn.conf.py"]:
        names |= set(_ENV_READ.findall(path.read_text()))
    return names | set(_SHELL_READ.findall((ROOT / "deploy" / "serve").read_text()))


def test_the_stack_has_every_service():
    assert set(SERVICES) >= {
        "web",
        "worker",
        "beat",
        "postgres",
        "redis",
        "s3",
        "prometheus",
        "grafana",
    }


def test_artifacts_and_backups_live_in_the_s3_service_buckets():
    buckets = SERVICES["s3-buckets"]["command"][0]
    for service in APP_SERVICES:
        env = SERVICES[service]["environment"]
        assert env["AWS_S3_ENDPOINT_URL"].endswith("http://s3:9000}")
        for variable in ("ARTIFACT_STORAGE_URL", "BACKUP_STORAGE_URL"):
            bucket = env[variable].split("s3://", 1)[1].split("/", 1)[0]
            assert f"store/{bucket}" in buckets
    for service in ("migrate", "web", "worker", "beat"):
        assert "s3-buckets" in SERVICES[service]["depends_on"]


@pytest.mark.parametrize("service", APP_SERVICES)
def test_every_variable_compose_sets_is_read_by_the_code(service):
    unread = set(SERVICES[service]["environment"]) - _variables_the_code_reads() - READ_BY_LIBRARIES
    assert not unread, f"{service} sets variables nothing reads: {sorted(unread)}"


@pytest.mark.parametrize("service", APP_SERVICES)
def test_production_settings_are_set(service):
    env = SERVICES[service]["environment"]
    assert env["DJANGO_DEBUG"] == "false"
    assert env["DJANGO_SECRET_KEY"].startswith("${DJANGO_SECRET_KEY:?")  # required, no default
    assert env["DATABASE_URL"].startswith("postgres://")
    assert env["REDIS_URL"].startswith("redis://")
    assert env["CELERY_BROKER_URL"].startswith("redis://")
    assert env["LOG_FORMAT"] == "json"
    assert "web" in env["DJANGO_ALLOWED_HOSTS"]  # Prometheus scrapes web:8000


def test_web_runs_the_server_script_the_repo_ships():
    assert SERVICES["web"]["command"] == ["deploy/serve"]
    assert os.access(ROOT / "deploy" / "serve", os.X_OK)
    env = SERVICES["web"]["environment"]
    assert {"WEB_CONCURRENCY", "WEB_THREADS", "WEB_MAX_RSS_MB"} <= set(env)


def test_gunicorn_config_takes_workers_and_timeout_from_the_environment(monkeypatch):
    monkeypatch.setenv("WEB_CONCURRENCY", "7")
    monkeypatch.setenv("WEB_TIMEOUT", "12")
    namespace: dict = {}
    exec((ROOT / "deploy" / "gunicorn.conf.py").read_text(), namespace)  # noqa: S102
    assert namespace["workers"] == 7 and namespace["timeout"] == 12
    assert namespace["accesslog"] is None


def test_worker_and_beat_run_celery_against_this_project():
    worker, beat = SERVICES["worker"]["command"], SERVICES["beat"]["command"]
    assert worker[:4] == ["celery", "-A", "config", "worker"]
    assert beat[:4] == ["celery", "-A", "config", "beat"]
    assert "django_celery_beat.schedulers:DatabaseScheduler" in beat
    assert "deploy" not in SERVICES["beat"] or "replicas" not in SERVICES["beat"]["deploy"]


def test_health_checks_use_commands_that_exist():
    from django.core.management import get_commands

    commands = get_commands()
    for name in ("worker", "beat"):
        test = SERVICES[name]["healthcheck"]["test"]
        assert test[1:3] == ["python", "manage.py"] and test[3] in commands
    migrate = " ".join(SERVICES["migrate"]["command"])
    assert "manage.py migrate --noinput" in migrate
    assert "/health" in " ".join(SERVICES["web"]["healthcheck"]["test"])


def test_web_has_the_resource_limits_of_the_seeds():
    resources = SERVICES["web"]["deploy"]["resources"]
    assert resources["limits"] == {"cpus": "4", "memory": "8G"}
    assert resources["reservations"] == {"cpus": "2", "memory": "4G"}


# ids get a prefix: a bare "postgres" id would look like the postgres marker to conftest.
@pytest.mark.parametrize("service", LONG_RUNNING, ids=lambda name: f"service-{name}")
def test_every_long_running_service_has_a_health_check(service):
    assert SERVICES[service]["healthcheck"]["test"]


_DOCKER_SIZE = re.compile(r"^([1-9][0-9]*)([kmg])$")
_SIZE_UNITS = {"k": 1024, "m": 1024**2, "g": 1024**3}


@pytest.mark.parametrize("service", list(SERVICES), ids=lambda name: f"service-{name}")
def test_every_service_rotates_its_logs(service):
    logging = SERVICES[service]["logging"]
    assert logging["driver"] == "json-file"
    options = logging["options"]
    # Docker's own syntax: a number and a unit; a bare number is bytes and a typo is refused
    # only when the container starts.
    size = _DOCKER_SIZE.match(options["max-size"])
    assert size, options["max-size"]
    files = int(options["max-file"])
    assert files >= 2  # the current file and at least one rotated one
    # A bounded disk footprint per container: no more than 1 GiB of logs.
    assert int(size.group(1)) * _SIZE_UNITS[size.group(2)] * files <= 1024**3
    assert options.get("compress") == "true"


def test_the_logrotate_example_reopens_instead_of_truncating():
    conf = (ROOT / "deploy" / "logrotate.conf").read_text()
    directives = {line.split()[0] for line in conf.splitlines() if line.strip()[:1].isalpha()}
    assert "copytruncate" not in directives  # loses lines; the app reopens on its own
    assert {"create", "delaycompress", "rotate"} <= directives


def test_database_artifacts_and_backups_live_in_named_volumes():
    declared = set(COMPOSE["volumes"])
    assert {"pgdata", "artifacts", "backups"} <= declared
    assert "pgdata:/var/lib/postgresql/data" in SERVICES["postgres"]["volumes"]
    web_env = SERVICES["web"]["environment"]
    for volume, variable in (("artifacts", "MODEL_STORE_DIR"), ("backups", "BACKUP_DIR")):
        for service in ("web", "worker"):
            assert f"{volume}:{web_env[variable]}" in SERVICES[service]["volumes"]


def test_metrics_are_open_to_the_compose_network_that_prometheus_scrapes_from():
    import ipaddress

    subnet = COMPOSE["networks"]["default"]["ipam"]["config"][0]["subnet"]
    allowed = SERVICES["web"]["environment"]["METRICS_ALLOWED_IPS"].split(",")
    assert subnet in allowed
    assert ipaddress.ip_network(subnet).is_private
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    (scrape,) = prometheus["scrape_configs"]
    # Every replica of `web`, not whichever one the name happens to resolve to.
    (discovery,) = scrape["dns_sd_configs"]
    assert (discovery["names"], discovery["type"], discovery["port"]) == (["web"], "A", 8000)
    assert scrape["metrics_path"] == "/metrics"


def test_scaled_services_publish_no_fixed_host_port():
    """`docker compose up --scale web=2 --scale worker=2` works by its configuration: two
    containers can't bind one host port, so only the load balancer publishes one."""
    for name in ("web", "worker", "beat"):
        assert "ports" not in SERVICES[name], name
    assert SERVICES["web"]["expose"] == ["8000"]
    lb = SERVICES["lb"]
    assert lb["ports"] == ["${WEB_PORT:-8000}:8000"]
    config = (ROOT / "deploy" / "haproxy.cfg").read_text()
    assert "server-template web 10 web:8000" in config and "resolvers docker" in config
    assert "option forwardfor" in config
    # One proxy in front of the app: X-Forwarded-For has exactly one trusted entry.
    assert SERVICES["web"]["environment"]["NUM_PROXIES"] == "${NUM_PROXIES:-1}"
    # Per-container metrics folders: pids collide across containers.
    assert "metrics" not in COMPOSE["volumes"]
    for name in ("web", "worker"):
        assert SERVICES[name]["tmpfs"] == [
            SERVICES[name]["environment"]["PROMETHEUS_MULTIPROC_DIR"]
        ]


def test_monitoring_files_are_mounted_where_their_configs_point():
    mounts = " ".join(SERVICES["prometheus"]["volumes"] + SERVICES["grafana"]["volumes"])
    for path in (
        "deploy/prometheus.yml",
        "deploy/alerts.yml",
        "deploy/grafana/provisioning",
        "deploy/grafana/dashboard.json",
    ):
        assert f"./{path}:" in mounts and (ROOT / path).exists()
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    assert prometheus["rule_files"] == ["/etc/prometheus/alerts.yml"]


def test_dockerfile_runs_the_server_script_as_a_non_root_user():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "FROM python:3.11-slim" in dockerfile
    user_lines = [line for line in dockerfile.splitlines() if line.startswith("USER ")]
    assert user_lines and user_lines[-1].split()[1] not in {"root", "0"}
    assert 'CMD ["deploy/serve"]' in dockerfile
    assert "requirements.txt" in dockerfile and "requirements-dev" not in dockerfile
