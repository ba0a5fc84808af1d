"""Logging set up once per process: JSON lines on stdout, one event per line."""

from __future__ import annotations

import logging.config


def configure_logging(level: str) -> None:
    """Install the JSON formatter on the root logger; call before the app or worker starts."""
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {
                "json": {
                    "()": "pythonjsonlogger.json.JsonFormatter",
                    "fmt": "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",
                    "rename_fields": {"asctime": "time", "levelname": "level"},
                }
            },
            "handlers": {
                "stdout": {
                    "class": "logging.StreamHandler",
                    "formatter": "json",
                    "stream": "ext://sys.stdout",
                }
            },
            "root": {"handlers": ["stdout"], "level": level},
        }
    )
