"""Announcements that a model's active version changed, so prediction workers swap at once.

The registry file ``<store>/<model>/active`` is the truth; this channel only makes workers look
now instead of at their next periodic check.
"""

from __future__ import annotations

import redis

from imgq.redis_keys import MODELS_CHANNEL


def announce_activation(client: redis.Redis, model: str) -> None:
    """Tell every prediction worker to re-read ``model``'s active version."""
    client.publish(MODELS_CHANNEL, model)
