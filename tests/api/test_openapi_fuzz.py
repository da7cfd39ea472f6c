"""Property-based requests from the API's own OpenAPI schema (schemathesis): never a 5xx, responses match the schema.

Schemathesis's pytest plugin does not support pytest 9 yet, so the strategies are driven by Hypothesis here.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

pytestmark = pytest.mark.e2e
EXAMPLES_PER_OPERATION = 20


def test_api_never_fails_on_generated_requests(api_url: str, api_key: str) -> None:
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    exercised = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def exercise(case: Any) -> None:
            case.call_and_validate(
                headers={"X-API-Key": api_key},
                checks=[not_a_server_error, response_schema_conformance],
            )

        exercise()
        exercised.append(operation.label)
    assert "POST /runs" in exercised and "GET /runs/{run_id}" in exercised
