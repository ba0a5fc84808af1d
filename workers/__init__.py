"""Celery workers: thin glue from queue messages to ``ml`` calls and job-record updates."""
