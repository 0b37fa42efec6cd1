"""What webhooks cost the registry: the extra time an event adds to the transaction that
publishes it (no subscriber vs 10), and how fast one sender delivers to a loopback receiver.

    DATABASE_URL=... .venv/bin/python bench/webhooks_overhead.py

Creates its own webhooks and deliveries and deletes them at the end.
"""

import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("WEBHOOK_ALLOWED_HOSTS", "127.0.0.1")

import django

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import transaction  # noqa: E402

from config.events import event_publish  # noqa: E402
from mlregistry.webhooks import services  # noqa: E402
from mlregistry.webhooks.models import Webhook, WebhookDelivery  # noqa: E402
from tests.mlregistry.webhook_receiver import Receiver  # noqa: E402

N = int(os.environ.get("BENCH_N", "300"))


def publish_cost(n: int) -> float:
    """Median microseconds of one event_publish inside a transaction (on-commit work included)."""
    samples = []
    for i in range(n):
        started = time.perf_counter()
        with transaction.atomic():
            event_publish("backup.failed", data={"id": i, "slot": "bench"})
        samples.append((time.perf_counter() - started) * 1e6)
    return statistics.median(samples)


def main() -> None:
    call_command("migrate", verbosity=0)
    receiver = Receiver().start()
    # The on-commit enqueue would need a broker: measured here is the registry's side only.
    services.deliveries_enqueue = lambda ids, countdown=None: None
    hooks = []
    try:
        bare = publish_cost(N)
        hooks = [
            services.webhook_create(
                name=f"bench-{i}", url=receiver.url + "/hook", events=["backup.failed"], actor="b"
            )
            for i in range(10)
        ]
        with_ten = publish_cost(N)
        print(f"event_publish, no subscriber: p50 {bare:.0f} us")
        print(f"event_publish, 10 subscribers: p50 {with_ten:.0f} us ({with_ten / bare:.1f}x)")

        pending = list(
            WebhookDelivery.objects.filter(webhook__in=hooks)
            .order_by("id")
            .values_list("id", flat=True)[:N]
        )
        latencies = []
        started = time.perf_counter()
        for delivery_id in pending:
            one = time.perf_counter()
            services.webhook_delivery_attempt(delivery_id=delivery_id)
            latencies.append((time.perf_counter() - one) * 1000)
        elapsed = time.perf_counter() - started
        print(
            f"one sender, loopback receiver: {len(pending) / elapsed:.0f} deliveries/s, "
            f"p50 {statistics.median(latencies):.1f} ms per attempt (request + 2 transactions)"
        )
    finally:
        Webhook.objects.filter(pk__in=[h.pk for h in hooks]).delete()
        receiver.stop()


if __name__ == "__main__":
    main()
