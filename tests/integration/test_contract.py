"""Contract tests: schemathesis generates requests from the gateway's own OpenAPI schema (a bounded
number per operation) and checks every answer: never a 5xx, and always what the schema says."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

pytestmark = pytest.mark.integration

EXAMPLES_PER_OPERATION = 12


def test_gateway_honours_its_schema(stack):
    # its own gateway, so generated ?wait values cannot hold a test for a minute each
    url = stack.add_gateway(STREAMINFER_MAX_WAIT_S="0.5")
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    failures: dict[str, str] = {}
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case) -> None:
            case.call_and_validate(base_url=url, timeout=30)

        try:
            check()
        except BaseException as exc:  # noqa: BLE001 - collect every operation's verdict, then report them together
            failures[operation.label] = str(exc)[:1500]
    print(f"\ncontract: {operations} operations x up to {EXAMPLES_PER_OPERATION} examples")
    assert operations >= 15
    assert failures == {}, "\n\n".join(f"{k}: {v}" for k, v in failures.items())
