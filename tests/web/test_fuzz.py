"""API fuzzing from the OpenAPI document (schemathesis): no input the schema allows or forbids may cause
a 500, and every response must match the documented status codes, content types and schemas.

Bounded: a fixed number of examples per operation (the module runs in well under a minute). The cases
come from schemathesis's strategies driven by our own ``@given`` (its ``pytest.from_fixture`` helper does
not work with pytest 9), so each operation is one parametrised test.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

OPERATIONS = [
    ("GET", "/api/health"),
    ("GET", "/api/options"),
    ("POST", "/api/search"),
    ("POST", "/api/search/image"),
    ("GET", "/api/studies/{row}"),
    ("GET", "/api/images/{row}"),
    ("POST", "/api/explain"),
]


@pytest.fixture(scope="module")
def api_schema(app: Any) -> Any:
    return schemathesis.openapi.from_asgi("/api/openapi.json", app)


def test_every_operation_is_fuzzed(api_schema: Any) -> None:
    documented = {
        (method.upper(), path) for path, item in api_schema.raw_schema["paths"].items() for method in item
    }
    assert documented == set(OPERATIONS)


#: Negative cases need an input to break: the two parameterless GETs get positive cases only.
CASES = [(method, path, schemathesis.GenerationMode.POSITIVE) for method, path in OPERATIONS] + [
    (method, path, schemathesis.GenerationMode.NEGATIVE)
    for method, path in OPERATIONS
    if path not in ("/api/health", "/api/options")
]


@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=[f"{m} {p} {g.value}" for m, p, g in CASES])
def test_api_never_fails_and_keeps_its_contract(api_schema: Any, method: str, path: str, mode: Any) -> None:
    """Positive cases (schema-valid) and negative ones (each violating the schema somewhere)."""
    operation = api_schema[path][method]
    # An uploaded file is "schema-valid" whatever its bytes; only decoding can tell an image, so random
    # bytes are rightly refused (422) and the "valid data is accepted" check does not apply there.
    excluded = [schemathesis.checks.positive_data_acceptance] if path == "/api/search/image" else []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=10,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def check(case: Any) -> None:
        case.call_and_validate(excluded_checks=excluded)

    check()
