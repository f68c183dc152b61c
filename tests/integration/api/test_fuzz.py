"""OpenAPI-driven fuzzing of every route of the live controller.

The app's own OpenAPI document (GET /openapi.json) drives schemathesis's
case generation; hypothesis runs it, bounded and derandomized, against the
real server: negative (schema-violating) and positive cases with the
fixture's token scoped to its own project, and negative cases without a
token. The only check is schemathesis's `not_a_server_error`: no input,
however malformed, may yield a 5xx. A second test grounds generated cases
and puts one hostile value at one spot of each (see below).
"""

from __future__ import annotations

import contextlib
import json
from typing import Any
from urllib.parse import quote, urlencode

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core import NotSet

from tests.integration.api.conftest import assert_client_error, create_server
from tests.integration.conftest import Api
from tests.support.budget import examples

# About 15 cases per operation in CI, 30 in the long run (OPENEVS_LONG=1).
NEGATIVE_EXAMPLES = examples(10, 20)
POSITIVE_EXAMPLES = examples(4, 6)
ANONYMOUS_EXAMPLES = 4
HOSTILE_EXAMPLES = examples(6, 12)


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


# --- hostile values at the spots the schema says are free-form ----------------
#
# Schema-driven generation rarely gets past the first check of a handler (it
# cannot guess a valid AZ), so it seldom reaches the database with odd text.
# Here each generated case is first grounded (known-good AZ, type, size, the
# ids of a real disk and server), then exactly one spot is made hostile: a
# body value, a new body key, a query value or a path id.

HOSTILE_TEXT = [
    "a\x00b", "\x00", "\ud800", "x\udfffy", "\ufeff", "\u202eevil", "名前" * 100, "é" * 200, "x" * 5000,
    "", " ", "' OR '1'='1' --", "../../../etc/passwd", "%00", "%s%n%x", "${jndi:ldap://x}", "null",
    "-1", "9" * 400, "\t\r\n", "\U0001f600", "<script>", "0x10", "1e309",
]
HOSTILE = st.one_of(
    st.sampled_from(HOSTILE_TEXT),
    st.sampled_from([None, True, False, -1, 0, 2**63, -(2**63) - 1, 10**30, 1.5, float("inf"),
                     [], {}, [None], {"": None}, {"a": {"b": {"c": []}}}]),
    st.text(max_size=40),
)
AZS = ("az1.dc1", "az2.dc2", "az3.dc3")
GROUNDED: dict[str, st.SearchStrategy[Any]] = {
    "availability_zone": st.sampled_from(AZS),
    "volume_type": st.sampled_from(("SATA", "SAS", "SSD", "GPSSD", "ESSD")),
    "size": st.integers(1, 2),
    "new_size": st.integers(2, 3),
}


def _spots(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths to every value in a JSON document, the root included."""
    found = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _spots(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _spots(value, (*path, i))
    return found


def _ground(draw: st.DrawFn, node: Any, ids: dict[str, str]) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in GROUNDED and draw(st.booleans()):
                out[key] = draw(GROUNDED[key])
            elif key in ("volumeId", "volume_id", "server_id") and key in ids and draw(st.booleans()):
                out[key] = ids[key]
            else:
                out[key] = _ground(draw, value, ids)
        return out
    if isinstance(node, list):
        return [_ground(draw, value, ids) for value in node]
    return node


@st.composite
def hostile_requests(
    draw: st.DrawFn, op: Any, api: Api, ids: dict[str, str]
) -> tuple[str, str, bytes | None]:
    own = {"project_id": api.project_id} if "{project_id}" in op.path else None
    case = draw(op.as_strategy(GenerationMode.POSITIVE, path_parameters=own))
    body = None if isinstance(case.body, NotSet) else _ground(draw, case.body, ids)
    path_params = {k: (ids.get(k, v) if draw(st.booleans()) else v)
                   for k, v in (case.path_parameters or {}).items()}
    query = dict(case.query or {})
    spots: list[tuple[str, Any]] = [("path", k) for k in path_params if k != "project_id"]
    spots += [("query", k) for k in query] + [("query", "name"), ("query", "marker")]
    if body is not None:
        spots += [("body", p) for p in _spots(body)]
    where, spot = draw(st.sampled_from(spots))
    value = draw(HOSTILE)
    if where == "path":
        path_params[spot] = str(value)
    elif where == "query":
        query[spot] = value if isinstance(value, str) else json.dumps(value)
    else:
        parent = body
        for step in spot[:-1]:
            parent = parent[step]
        if not spot:
            body = value
        elif isinstance(parent, dict) and draw(st.booleans()):
            parent[draw(st.sampled_from(HOSTILE_TEXT))] = value  # a new, hostile key
        else:
            parent[spot[-1]] = value
    url = api.base + op.path.format(**{
        k: quote(str(v), safe="", errors="surrogatepass") for k, v in path_params.items()})
    if query:
        url += "?" + urlencode(query, doseq=True, errors="surrogatepass")
    content = None if body is None else json.dumps(body).encode()  # \\u-escapes, as any encoder may
    return case.method.upper(), url, content


def test_hostile_values_yield_no_server_error(api: Api) -> None:
    operations = load_operations(api)
    vol = api.create_volume(size=1)
    server = create_server(api)
    ids = {"volume_id": vol["id"], "volumeId": vol["id"], "server_id": server["id"],
           "type_id": "SSD"}
    failures: list[str] = []
    for op in operations:
        @given(request=hostile_requests(op, api, ids))
        @settings(max_examples=HOSTILE_EXAMPLES, derandomize=True, deadline=None, database=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        def probe(request: tuple[str, str, bytes | None]) -> None:
            method, url, content = request
            headers = {"X-Auth-Token": api.token}
            if content is not None:
                headers["Content-Type"] = "application/json"
            r = api.client.request(method, url, content=content, headers=headers)
            what = f"{method} {url[:300]} {content[:300] if content else b''!r}"
            if r.status_code >= 500:
                failures.append(f"{what} -> {r.status_code} {r.text[:300]}")
            elif r.status_code >= 400 and method != "HEAD":
                try:
                    assert_client_error(r)
                except AssertionError as exc:
                    failures.append(f"{what} -> bad fault body: {exc}")

        probe()
    assert not failures, "\n".join(failures[:20])
    assert api.get("/v2/{p}/volumes").status_code == 200
