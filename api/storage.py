"""What each owner keeps on the store: the datasets a caller sees, and each owner's bytes.

Models and datasets share one store, so an owner's use is the sum of both; ``GET /models`` and
``GET /datasets`` show it beside each item (quotas can later be judged on the same number).
"""

from __future__ import annotations

from collections.abc import Iterable

from api.auth import current_client
from api.model_access import requested_owner
from api.services import services
from imgq.api_keys import Role
from ml.registry import split_model_id


def visible_datasets() -> list[str]:
    """Ids of the caller's datasets (admins: every client's, or ``owner=``'s only)."""
    caller = current_client()
    owner = requested_owner()
    store = services().datasets
    if caller.role is Role.ADMIN:
        return store.datasets(owner)
    if owner is not None and owner != caller.client:
        return []
    return store.datasets(caller.client)


def owner_storage_bytes(owners: Iterable[str]) -> dict[str, int]:
    """Bytes each owner's models and datasets take on the store."""
    svc = services()
    wanted = set(owners)
    totals = dict.fromkeys(wanted, 0)
    for model in svc.registry.models():
        owner, _ = split_model_id(model)
        if owner in wanted:
            totals[owner] += svc.registry.storage_bytes(model)
    for owner in wanted:
        totals[owner] += svc.datasets.namespace_bytes(owner)
    return totals
