"""Pieces shared by the API and the workers, one room per concept.

``settings`` (the typed settings object), ``errors`` (every service error code), ``redis_keys``
(every Redis key), ``queueing`` (queues, task names, Celery configuration), ``api_keys``,
``logs``, ``model_events``; and the subpackages ``jobs/`` (job state in Redis), ``webhooks/``
(delivery), ``client/`` (HTTP client and CLI) and ``local/`` (command lines and the supervisor
of a local run). Nothing here imports TensorFlow or Flask, so the web process stays light and
the workers do not pull in the web stack.
"""
