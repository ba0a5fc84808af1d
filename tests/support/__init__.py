"""Helpers the test modules share, one concept a module; fixtures stay in ``conftest.py``.

* ``http``: the session's API keys and webhook secrets, requests made with them, waiting on jobs.
* ``metrics``: reading a Prometheus endpoint into a dict of samples.
* ``services``: the weights cache and starting a worker on a metrics port of its own.
* ``images``: encoded images built in memory (JPEG from an array, solid-colour files).
* ``datasets``: dataset archives as a client uploads them, and a fine-tune submitted with one.
* ``manifests`` and ``kustomize``: Kubernetes objects, and the renderer that builds them from
  ``deploy/``.
"""
