"""Gunicorn entry point: ``gunicorn api.wsgi:app``."""

from __future__ import annotations

from api.app import create_app
from imgq.logs import configure_logging
from imgq.settings import load_settings

_settings = load_settings()
configure_logging(_settings.log_level)
app = create_app(_settings)
