"""Turn a ``Settings`` object back into ``IMGQ_*`` variables for a child process."""

from __future__ import annotations

from imgq.settings import Settings


def settings_env(settings: Settings) -> dict[str, str]:
    """The ``IMGQ_*`` variables that make a child process load the same settings."""
    env = {}
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"IMGQ_{name.upper()}"] = str(value)
    return env
