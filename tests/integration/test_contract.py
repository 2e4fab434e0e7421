"""Contract tests: schemathesis generates requests from the gateway's own OpenAPI schema (a bounded
number per operation) and checks every answer: never a 5xx, and always what the schema says."""

from __future__ import annotations

import asyncio

import pytest
import schemathesis
from helpers.keys import create_api_key
from hypothesis import HealthCheck, given, settings

pytestmark = pytest.mark.integration

EXAMPLES_PER_OPERATION = 12


@pytest.mark.parametrize("auth", ["disabled", "apikey"])
async def test_gateway_honours_its_schema(stack, auth):
    # its own gateway, so generated ?wait values cannot hold a test for a minute each
    url = stack.add_gateway(STREAMINFER_MAX_WAIT_S="0.5", STREAMINFER_AUTH=auth)
    # with auth on, every call carries an admin's valid key: the whole surface, not only the 401s
    headers = (
        {"X-API-Key": await create_api_key(stack.redis_url, stack.prefix, "fuzzer", admin=True)}
        if auth != "disabled"
        else {}
    )
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    failures: dict[str, str] = {}
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case) -> None:
            case.call_and_validate(base_url=url, timeout=30, headers=headers)

        try:
            await asyncio.to_thread(check)
        except BaseException as exc:  # noqa: BLE001 - collect every operation's verdict, then report them together
            failures[operation.label] = str(exc)[:1500]
    print(
        f"\ncontract (auth {auth}): {operations} operations x up to {EXAMPLES_PER_OPERATION} examples"
    )
    assert operations >= 15
    assert failures == {}, "\n\n".join(f"{k}: {v}" for k, v in failures.items())
