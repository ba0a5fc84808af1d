"""Property-based requests generated from the API's own OpenAPI document (schemathesis).

Valid and invalid inputs for every operation, through the real app against the real Redis:
no response may be a 5xx, and every response must match what the document promises.
"""

from __future__ import annotations

from typing import Any, cast

import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis import checks

from api.app import create_app
from imgq.settings import Settings
from tests.support.http import credentials

OPERATIONS_EXPECTED = 50
"""Operations in the document (a drop would mean routes fell out of it)."""


def test_no_server_errors_and_responses_match_the_document(settings: Settings) -> None:
    auth = {"Authorization": f"Bearer {credentials.keys['admin']}"}
    schema = schemathesis.openapi.from_wsgi("/openapi.json", create_app(settings), headers=auth)
    schema.config.generation.update(
        modes=[schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
    )
    # An operation the library cannot read makes .ok() raise: that fails the test too.
    operations = [cast(Any, result).ok() for result in schema.get_all_operations()]
    assert len(operations) >= OPERATIONS_EXPECTED
    calls = 0

    for operation in operations:

        @given(case=operation.as_strategy())
        @hypothesis_settings(
            max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def check(case: Any) -> None:
            nonlocal calls
            calls += 1
            case.call_and_validate(
                headers=auth,
                checks=[checks.not_a_server_error, checks.response_schema_conformance],
            )

        check()
    assert calls >= 10 * len(operations)  # it really generated requests for every operation
