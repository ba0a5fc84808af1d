"""Which dataset a request means, and whether the caller may use it.

Datasets are never shared: a name means the caller's own dataset (``@<client>/<name>`` on the
store), and admins reach another client's with ``owner=``, as for models. Another client's
dataset is answered exactly like one that does not exist: ``404 dataset_not_found``.
"""

from __future__ import annotations

from api.auth import current_client
from api.model_access import requested_owner
from api.services import services
from imgq.api_keys import Role
from imgq.errors import DatasetNotFound
from ml.dataset_store import DatasetVersion
from ml.registry import model_id

DATASET_OWNER_PARAMETER = {
    "in": "query",
    "name": "owner",
    "required": False,
    "schema": {"type": "string"},
    "description": "Admins: the client whose dataset this is (default: your own).",
}
"""The ``owner=`` parameter as every dataset route documents it."""


def dataset_id(name: str, owner: str | None = None) -> str:
    """The id of the caller's dataset ``name`` (or ``owner``'s, for admins), existing or not."""
    caller = current_client()
    owner = owner if owner is not None else requested_owner()
    if owner is not None and owner != caller.client and caller.role is not Role.ADMIN:
        raise DatasetNotFound(f"No dataset named {name!r}.", {"dataset": name})
    return model_id(owner or caller.client, name)


def existing_dataset(name: str, owner: str | None = None) -> str:
    """The id of the caller's dataset ``name``; 404 when it has no version."""
    found = dataset_id(name, owner)
    services().datasets.versions(found)  # DatasetNotFound, naming it as the caller does
    return found


def dataset_version(name: str, version: int | None, owner: str | None = None) -> DatasetVersion:
    """A version (default: the latest) of the caller's dataset ``name``."""
    return services().datasets.get(existing_dataset(name, owner), version)
