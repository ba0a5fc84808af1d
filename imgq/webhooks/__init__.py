"""Webhooks: which callback URLs imgq calls, the delivery state machine, its schedule in Redis,
and the signature scheme."""
