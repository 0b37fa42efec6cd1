"""Celery tasks of the predictions app (the drift check lives in quality.tasks)."""
