"""The served OpenAPI document is valid, and schemathesis finds no 5xx and no response that breaks it.

Schemathesis generates requests from the document the server serves (as admin): at least 50 valid and 50
invalid examples per operation. The server runs in this event loop; schemathesis' blocking client runs in a
thread.
"""

import asyncio

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from openapi_spec_validator import validate
from schemathesis import GenerationMode

from hookpost.web.api import ROUTES
from hookpost.web.app import LIMITER_KEY
from tests.api.conftest import declare_topology

EXAMPLES = 50
# A schema-valid request may still be refused with a documented 400: a webhook URL to a private address, an
# event-type pattern like "a..b", a time that is not one. JSON Schema cannot say those; the rest is checked.
# And an invalid request may reach the server valid: a negative case's extra query parameter whose value is an
# empty list is dropped by the HTTP client, so the server sees (and accepts) a valid request. Rejection of bad
# input is tested directly in test_api_e2e.test_bad_input_is_a_problem_naming_the_field; here every response,
# valid input or not, must still be documented, conform to the document and never be a 5xx.
EXCLUDED = [schemathesis.checks.positive_data_acceptance, schemathesis.checks.negative_data_rejection]


async def test_served_spec_is_valid_openapi_31(api):
    status, spec, _ = await api.call("GET", "/openapi.json", role="viewer")
    assert status == 200 and spec["openapi"] == "3.1.0"
    validate(spec)
    # every route is in it, with its role and its problem responses
    ops = [(m.upper(), p) for p, item in spec["paths"].items() for m in item]
    assert sorted(ops) == sorted((r.method, f"/api/v1{r.path}") for r in ROUTES)
    assert spec["paths"]["/api/v1/events"]["get"]["responses"]["400"]["content"]["application/problem+json"]


def _fuzz(spec: dict, base_url: str, token: str) -> tuple[int, list[str]]:
    schema = schemathesis.openapi.from_dict(spec)
    failures: list[str] = []
    calls = 0
    headers = {"Authorization": f"Bearer {token}"}
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode)

            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def run(case: schemathesis.Case) -> None:
                nonlocal calls
                calls += 1
                case.call_and_validate(base_url=base_url, headers=headers, excluded_checks=EXCLUDED)

            try:
                run()
            except BaseException as exc:  # collect every failing operation, then report them together
                failures.append(f"{operation.label} [{mode.value}]: {str(exc)[:1500]}")
    return calls, failures


async def test_schemathesis_finds_no_server_errors(api, settings, store):
    await declare_topology(settings)
    api.server.app[LIMITER_KEY].limit = 10**9  # schemathesis tries requests without a token on purpose
    hook = await store.webhooks.create("http://127.0.0.1:9/x", ["*"])
    _, spec, _ = await api.call("GET", "/openapi.json")
    calls, failures = await asyncio.to_thread(_fuzz, spec, api.server.url, api.tokens["admin"])
    await api.admin.jobs.wait()
    assert calls >= len(ROUTES) * EXAMPLES, calls
    assert not failures, "\n".join(sorted(set(failures))[:20])
    assert await store.webhooks.get(hook.id)  # schemathesis' random ids deleted nothing real
