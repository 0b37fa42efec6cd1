"""Celery tasks of the registry (training and drift tasks live in quality.tasks)."""
