"""Announcements that a model's active version changed, so prediction workers swap at once.

The registry file ``<store>/<model>/active`` is the truth; this channel only makes workers look
now instead of at their next periodic check.
"""

from __future__ import annotations

import redis

MODELS_CHANNEL = "imgq:models:activated"
"""Pub/sub channel carrying the name of a model whose active version changed."""


def announce_activation(client: redis.Redis, model: str) -> None:
    """Tell every prediction worker to re-read ``model``'s active version."""
    client.publish(MODELS_CHANNEL, model)
