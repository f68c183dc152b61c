"""OpenAPI-driven fuzzing of every route of the live controller.

The app's own OpenAPI document (GET /openapi.json) drives schemathesis's
case generation; hypothesis runs it, bounded and derandomized, against the
real server: negative (schema-violating) and positive cases with the
fixture's token scoped to its own project, and negative cases without a
token. The only check is schemathesis's `not_a_server_error`: no input,
however malformed, may yield a 5xx.
"""

from __future__ import annotations

import contextlib
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.integration.conftest import Api

# About 30 cases per operation: the whole file stays well under 90 s on both databases.
NEGATIVE_EXAMPLES = 20
POSITIVE_EXAMPLES = 6
ANONYMOUS_EXAMPLES = 4


def load_operations(api: Api) -> list[Any]:
    r = api.client.get(f"{api.base}/openapi.json")
    assert r.status_code == 200, r.text
    schema = schemathesis.openapi.from_dict(r.json())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20, [op.label for op in operations]
    return operations


def run_operation(api: Api, session: requests.Session, strategy: st.SearchStrategy[Any],
                  max_examples: int, failures: list[str]) -> None:
    @given(case=strategy)
    @settings(max_examples=max_examples, derandomize=True, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    def probe(case: Any) -> None:
        response = case.call(base_url=api.base, session=session, timeout=30)
        try:
            case.validate_response(response, checks=[not_a_server_error])
        except Exception as exc:  # noqa: BLE001 - collect every failing operation, report them together
            failures.append(f"{case.operation.label}: {response.status_code} {response.text[:300]}"
                            f" <- {case.as_curl_command()[:600]} ({type(exc).__name__})")

    with contextlib.suppress(Unsatisfiable):  # nothing here can be made invalid (GET / has no inputs)
        probe()


def test_no_input_yields_a_server_error(api: Api) -> None:
    operations = load_operations(api)
    labels = {op.label for op in operations}
    for route in ("POST /v2/{project_id}/volumes", "POST /v2/{project_id}/volumes/{volume_id}/action",
                  "POST /v3/auth/tokens", "POST /v2.1/{project_id}/servers/{server_id}/action"):
        assert route in labels, sorted(labels)
    auth = {"X-Auth-Token": api.token}
    failures: list[str] = []
    with requests.Session() as session:
        for op in operations:
            own = {"project_id": api.project_id} if "{project_id}" in op.path else None
            if len(op.query) or len(op.body):
                # Bad bodies and queries, on the token's own project so they reach the handlers.
                plan = [(GenerationMode.NEGATIVE, own, auth, NEGATIVE_EXAMPLES),
                        (GenerationMode.POSITIVE, own, auth, POSITIVE_EXAMPLES)]
            else:
                # Nothing but path and headers to break: random ids and project ids.
                plan = [(GenerationMode.POSITIVE, own, auth, NEGATIVE_EXAMPLES),
                        (GenerationMode.POSITIVE, None, auth, POSITIVE_EXAMPLES)]
            plan.append((GenerationMode.POSITIVE, None, None, ANONYMOUS_EXAMPLES))
            for mode, path_ids, headers, examples in plan:
                strategy = op.as_strategy(mode, path_parameters=path_ids, headers=headers)
                run_operation(api, session, strategy, examples, failures)
    assert not failures, "\n".join(failures[:20])
    # The controller is still healthy afterwards.
    assert api.get("/v2/{p}/volumes").status_code == 200
