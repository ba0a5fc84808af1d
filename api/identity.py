"""``GET /whoami``: which client and role the presented key stands for.

A caller can always work this out from the keys it was given, but a program that is handed a
key (the ``/console`` page once someone has signed in, a script checking its configuration)
should not have to guess from which requests succeed: the page shows who is signed in, and
offers an action only to those the API would allow it (activating a version: the model's owner
or an admin). A key that matches none is ``401`` like everywhere else, which makes this the
cheapest way to check a key.
"""

from __future__ import annotations

from typing import Any

from flask_smorest import Blueprint
from marshmallow import Schema, fields

from api.auth import current_client
from api.schemas import ErrorEnvelopeSchema
from imgq.api_keys import Role

blp = Blueprint("identity", __name__, description="Who the key belongs to")


class IdentitySchema(Schema):
    """The client a key belongs to and its role."""

    client = fields.String(required=True, metadata={"description": "The key's client name."})
    role = fields.Enum(Role, by_value=True, required=True)


@blp.route("/whoami")
@blp.response(200, IdentitySchema)
@blp.alt_response(401, schema=ErrorEnvelopeSchema)
def whoami() -> dict[str, Any]:
    """The client and role of the key this request was sent with."""
    caller = current_client()
    return {"client": caller.client, "role": caller.role}
