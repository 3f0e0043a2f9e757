"""Sending work to the workers: task names, the dispatcher, Celery's configuration (no celery import)."""
