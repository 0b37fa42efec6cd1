"""Webhooks: staff subscribe a URL to registry events (config.events); each event becomes one
signed delivery per matching webhook, written in the transaction of the change and sent by a
Celery task after it commits, retried with backoff, every attempt recorded.

models.py (Webhook, WebhookDelivery, WebhookAttempt), targets.py (which URLs may be called),
signing.py (X-Registry-Signature), services.py (every change and the sending), tasks.py,
api.py (/api/v1/webhooks/), admin.py, health.py (readiness).
"""
