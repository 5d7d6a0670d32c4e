"""The OpenAPI document against the running app: every operation says what it takes, what
it answers and how it authenticates; every answer of a real walk matches it; and a
schema-driven fuzzer (schemathesis) finds the app keeping to it, without a key, with a
buyer's key that holds credits and with a key that holds none."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import schemathesis
import schemathesis.specs.openapi.schemas  # loaded at collection: see below
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from werkzeug.test import TestResponse

from inference import codecs
from marketplace.web.oip_schemas import OipError
from marketplace.web.schemas import ApiError
from tests.support.world import World, buy, infer, sign_in

# schemathesis loads its OpenAPI modules lazily, and pytest rewrites them on import (it is a
# pytest plugin); parsing them deep inside a test's stack once hit CPython 3.11.7's
# "AST constructor recursion depth mismatch". Imported above, at collection, instead.

EXAMPLES = 40  # requests per operation, identity and strategy (see `_strategies`)
ANSWER_CHECKS: list[Callable[..., Any]] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
CHECKS = [*ANSWER_CHECKS, ignored_auth]  # ignored_auth re-sends a 2xx without the key
SECURED = {
    ("GET", "/api/v1/keys"),
    ("POST", "/api/v1/keys"),
    ("DELETE", "/api/v1/keys/{key_id}"),
    ("POST", "/api/v1/receipts"),
    ("GET", "/api/v1/credits"),
    ("GET", "/api/v1/usage/{inference_id}"),
}


def _load(world: World) -> Any:
    app = world.client.application  # type: ignore[attr-defined]
    return schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)


def test_every_operation_documents_its_bodies_answers_and_auth(world: World):
    doc = world.client.get("/api/v1/openapi.json").get_json()  # type: ignore[attr-defined]
    operations = {
        (method.upper(), path): op
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
    }
    assert len(operations) == 21
    for (method, path), op in operations.items():
        assert op["responses"], f"{method} {path} documents no answer"
        assert {"413", "500"} <= set(op["responses"]), f"{method} {path}"
        for status, answer in op["responses"].items():
            assert "application/json" in answer["content"], f"{method} {path} {status}"
    bodies = {key for key, op in operations.items() if "requestBody" in op}
    assert bodies == {
        ("POST", "/api/v1/auth/verify"),
        ("POST", "/api/v1/keys"),
        ("POST", "/api/v1/models/{model_id}/purchase"),
        ("POST", "/api/v1/receipts"),
        ("POST", "/v2/models/{model_id}/infer"),
    }
    infer_op = operations[("POST", "/v2/models/{model_id}/infer")]
    body = infer_op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body.rsplit("/", 1)[1].startswith("InferenceRequest")
    expected = {"200", "400", "401", "402", "404", "409", "413", "422", "500", "503", "504"}
    assert expected <= set(infer_op["responses"])
    assert "application/octet-stream" in infer_op["responses"]["200"]["content"]
    assert {"X-Credits-Remaining", "X-Usage-Receipt"} <= set(
        infer_op["responses"]["200"]["headers"]
    )

    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "mm_<key id>_<secret>",
        "description": "An API key from POST /api/v1/auth/verify",
    }
    secured = {key for key, op in operations.items() if op.get("security") == [{"bearer": []}]}
    assert secured == SECURED
    # a paid call: a key, an x402 payment, or neither (a 402 with the offers)
    assert infer_op["security"] == [{"bearer": []}, {"x402": []}, {}]
    assert doc["components"]["securitySchemes"]["x402"]["name"] == "PAYMENT-SIGNATURE"

    # the two families' error shapes
    schemas = doc["components"]["schemas"]

    def required(answer: dict[str, Any]) -> set[str]:
        ref = answer["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        return set(schemas[ref]["required"])

    assert required(operations[("GET", "/api/v1/keys")]["responses"]["401"]) == {
        "error",
        "message",
    }
    assert required(infer_op["responses"]["401"]) == {"error", "code"}
    assert required(infer_op["responses"]["402"]) == {"error", "code", "accepts"}


def test_answers_outside_the_operations_keep_each_familys_error_shape(world: World):
    # an undocumented method (405, with Allow) and an unknown path (404) on both families
    client: Any = world.client
    doc = client.get("/api/v1/openapi.json").get_json()
    for path, ops in doc["paths"].items():
        concrete = path.replace("{model_id}", str(world.model_id)).replace("{key_id}", "k")
        r = client.open(concrete, method="PATCH")
        assert r.status_code == 405, path
        assert set(r.headers["Allow"].split(", ")) >= {m.upper() for m in ops}, path
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        shape = OipError if path.startswith("/v2/") else ApiError
        assert shape.model_validate(r.get_json()), path
    assert ApiError.model_validate(client.get("/api/v1/nothing").get_json())
    assert OipError.model_validate(client.get("/v2/nothing").get_json())
    assert client.get("/v2/nothing").get_json()["code"] == "not_found"


# -------------------------------------------------------------- the real walk


@contextlib.contextmanager
def _recorded(world: World) -> Iterator[list[TestResponse]]:
    """Every response `world.client` gets meanwhile (the walk's helpers use it)."""
    client: Any = world.client
    seen: list[TestResponse] = []
    send = client.open

    def open_(*args: Any, **kwargs: Any) -> TestResponse:
        response: TestResponse = send(*args, **kwargs)
        seen.append(response)
        return response

    client.open = open_
    try:
        yield seen
    finally:
        del client.open


def test_every_answer_of_the_walk_is_as_documented(world: World):
    client: Any = world.client
    with _recorded(world) as seen:
        tx = buy(world, 2, 5)
        key = sign_in(world, 2)  # nonce 200, verify 201
        broke = sign_in(world, 3)  # holds no credit
        spare = sign_in(world, 2)
        auth = {"Authorization": f"Bearer {key}"}

        def post_receipt(who: str) -> int:
            r = client.post(
                "/api/v1/receipts", json={"tx_hash": tx}, headers={"Authorization": f"Bearer {who}"}
            )
            return int(r.status_code)

        assert post_receipt(broke) == 403  # not the buyer
        assert post_receipt(key) == 201
        assert post_receipt(key) == 409  # once
        assert infer(world, key).status_code == 200
        features = np.array([[5.1, 3.5, 1.4, 0.2]] * 3, np.float32)
        body, headers = codecs.encode_request(
            {"features": features}, binary=True, outputs=["label", "probabilities"]
        )
        path = f"/v2/models/{world.model_id}/infer"
        r = client.post(path, data=body, headers={**headers, **auth})
        assert r.status_code == 200 and codecs.HEADER_LENGTH in r.headers
        assert r.mimetype == "application/octet-stream"
        assert infer(world, broke).status_code == 402
        assert infer(world, "mm_nobody_nothing").status_code == 401
        assert client.get(f"/v2/models/{world.model_id}").status_code == 200
        assert client.get(f"/v2/models/{world.model_id}/ready").status_code == 200
        assert client.get("/v2/models/999/ready").status_code == 404
        assert client.get("/v2/health/ready").status_code == 200
        assert client.get("/api/v1/credits", headers=auth).status_code == 200
        assert client.get("/api/v1/keys", headers=auth).status_code == 200
        spare_id = spare.split("_")[1]
        assert client.delete(f"/api/v1/keys/{spare_id}", headers=auth).status_code == 200
        assert client.get(f"/api/v1/models/{world.model_id}").status_code == 200
        assert client.get("/api/v1/models?q=iris&sort=price_desc").status_code == 200
        purchase = {"calls": 10**6, "buyer": world.signers[3].address, "deadline": 2**40}
        r = client.post(f"/api/v1/models/{world.model_id}/purchase", json=purchase)
        assert r.status_code == 200 and r.get_json()["permit"]["message"]["value"].isdigit()
        assert client.get("/api/v1/deployment").status_code == 200
    schema = _load(world)
    for response in seen:
        request = response.request
        operation = schema.find_operation_by_path(request.method, request.path)
        assert operation is not None, (request.method, request.path)
        operation.Case().validate_response(response, checks=ANSWER_CHECKS)
    assert {r.status_code for r in seen} == {200, 201, 401, 402, 403, 404, 409}


# -------------------------------------------------------------------- the fuzzer


def _valid_bodies(metadata: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Inference requests that fit the model's signature, in JSON (FP32 inputs: the demo
    model's), asking for any of its outputs, in JSON or binary."""

    def tensor(spec: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
        assert spec["datatype"] == "FP32", spec
        dims = st.tuples(*(st.integers(1, 4) if d == -1 else st.just(d) for d in spec["shape"]))
        finite = st.floats(width=32, allow_nan=False, allow_infinity=False)
        return dims.flatmap(
            lambda shape: st.lists(
                finite, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))
            ).map(
                lambda data: {
                    "name": spec["name"],
                    "datatype": "FP32",
                    "shape": list(shape),
                    "data": data,
                }
            )
        )

    names = [o["name"] for o in metadata["outputs"]]
    outputs = st.lists(
        st.sampled_from(names).map(lambda n: {"name": n})
        | st.builds(
            lambda n, b: {"name": n, "parameters": {"binary_data": b}},
            st.sampled_from(names),
            st.booleans(),
        ),
        max_size=len(names),
        unique_by=lambda o: o["name"],
    )
    return st.fixed_dictionaries(
        {"inputs": st.tuples(*(tensor(s) for s in metadata["inputs"])).map(list)},
        optional={
            "id": st.text(max_size=8),
            "outputs": outputs,
            "parameters": st.fixed_dictionaries({"binary_data_output": st.booleans()}),
        },
    )


def _strategies(operation: Any, world: World, headers: dict[str, str]) -> list[Any]:
    """Valid and invalid requests; for a model's routes, also on the listed model (a
    random id is almost never one), and for a paid call with a key, requests the model
    takes (random ones almost never fit its signature)."""
    pinned: list[dict[str, Any]] = [{}]
    if "{model_id}" in operation.path:
        pinned.append({"model_id": world.model_id})
    strategies = [
        operation.as_strategy(mode, headers=headers, path_parameters=path or None)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        for path in pinned
    ]
    if operation.path.endswith("/infer") and headers:
        metadata = world.client.get(f"/v2/models/{world.model_id}").get_json()  # type: ignore[attr-defined]
        strategies.append(
            _valid_bodies(metadata).map(
                lambda body: operation.Case(
                    body=body,
                    headers=headers,
                    path_parameters={"model_id": world.model_id},
                    media_type="application/json",
                )
            )
        )
    return strategies


def _run(strategy: Any, label: str, failures: dict[str, str], statuses: set[int]) -> int:
    """Send up to EXAMPLES requests drawn from `strategy`; each distinct failure lands in
    `failures` (what failed -> how to reproduce it). Returns how many were sent."""
    sent = 0

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        nonlocal sent
        sent += 1
        try:
            statuses.add(case.call_and_validate(checks=CHECKS).status_code)
        except FailureGroup as group:
            for failure in group.exceptions:
                failures.setdefault(f"{label}: {failure.title}", str(group))

    # Unsatisfiable: nothing to make invalid (no parameters, or only a pinned one)
    with contextlib.suppress(Unsatisfiable):
        run()
    return sent


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_schema_violation(world: World):
    started = time.monotonic()
    tx = buy(world, 2, 1000)
    key = sign_in(world, 2)
    redeemed = world.client.post(  # type: ignore[attr-defined]
        "/api/v1/receipts", json={"tx_hash": tx}, headers={"Authorization": f"Bearer {key}"}
    )
    assert redeemed.status_code == 201
    broke = sign_in(world, 3)
    schema = _load(world)
    operations = [result.ok() for result in schema.get_all_operations()]
    # every operation but the document itself (schemathesis leaves its own source out)
    assert len(operations) == 20
    report, found = [], {}
    statuses: dict[str, set[int]] = {op.label: set() for op in operations}
    for who, headers in (
        ("no key", {}),
        ("a buyer's key", {"Authorization": f"Bearer {key}"}),
        ("a key without credit", {"Authorization": f"Bearer {broke}"}),
    ):
        failures: dict[str, str] = {}
        sent = sum(
            _run(strategy, op.label, failures, statuses[op.label])
            for op in operations
            for strategy in _strategies(op, world, headers)
        )
        report.append(f"{who}: {sent} requests, {len(failures)} failures")
        found |= {f"[{who}] {what}": how for what, how in failures.items()}
    print(
        f"\n{len(operations)} operations;",
        "; ".join(report),
        f"in {time.monotonic() - started:.1f} s",
        *(f"\n  {label}: {sorted(codes)}" for label, codes in statuses.items()),
    )
    assert not found, "\n\n".join(f"{what}\n{how}" for what, how in found.items())
    assert all(statuses.values()), statuses  # every operation was exercised
    # the fuzzer reached the paid call's answers, not only its refusals (no key is a 402:
    # the offers, x402's among them)
    assert {200, 400, 402, 404} <= statuses["POST /v2/models/{model_id}/infer"]
