"""The checked-in OpenAPI description parses, and documents every error the token endpoint's code can raise.

The codes are read from connections/endpoint/issuing.py with `ast`, so a code added there fails here until the spec
lists it under the right status.
"""

import ast
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import yaml

import connections
from connections.endpoint import freshness, issuing, proxy

SPEC = Path(connections.__file__).parent / "openapi.yaml"
TOKEN_PATH = "/api/v1/connections/{slug}/token"
PROXY_PATH = "/api/v1/connections/{slug}/proxy/{path}"
TOKEN_MODULES = (issuing, freshness)  # what the token endpoint raises
PROXY_MODULES = (issuing, freshness, proxy)


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return yaml.safe_load(SPEC.read_text())


def _ref_parts(ref: str) -> list[str]:
    assert ref.startswith("#/"), ref
    return ref[2:].split("/")


def _deref(spec: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = spec
        for part in _ref_parts(node["$ref"]):
            target = target[part]
        node = target
    return node


def _raised_errors(modules: tuple = TOKEN_MODULES) -> list[tuple[int, str, bool, int]]:
    """(status, error code, whether a Retry-After is passed, line) of every TokenRequestError(...) in the modules."""
    source = "\n".join(Path(module.__file__).read_text() for module in modules)
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        if name != "TokenRequestError":
            continue
        arguments = dict(zip(("status", "error", "detail", "retry_after"), node.args, strict=False))
        arguments |= {keyword.arg: keyword.value for keyword in node.keywords if keyword.arg}
        status, error = arguments.get("status"), arguments.get("error")
        assert isinstance(status, ast.Constant) and isinstance(error, ast.Constant), (
            f"issuing.py line {node.lineno}: give the status and the error code as literals, so this test sees them"
        )
        retry_after = arguments.get("retry_after")
        has_retry_after = retry_after is not None and not (
            isinstance(retry_after, ast.Constant) and retry_after.value is None
        )
        found.append((status.value, error.value, has_retry_after, node.lineno))
    return found


def _codes_for(spec: dict[str, Any], response: dict[str, Any]) -> set[str]:
    """The error codes a documented error response allows."""
    schema = _deref(spec, _deref(spec, response)["content"]["application/json"]["schema"])
    narrowed = [
        part["properties"]["error"]["enum"]
        for part in schema.get("allOf", [])
        if "error" in part.get("properties", {}) and "enum" in part["properties"]["error"]
    ]
    assert narrowed, "each error response narrows `error` to the codes of its status"
    return set(narrowed[0])


def test_the_spec_is_valid_openapi_and_describes_the_token_endpoint(spec):
    assert spec["openapi"].startswith("3.")
    assert set(spec["paths"]) >= {TOKEN_PATH, "/healthz", "/readyz", "/livez"}
    operation = spec["paths"][TOKEN_PATH]["get"]
    assert operation["security"] == [{"botKey": []}]
    assert spec["components"]["securitySchemes"]["botKey"]["scheme"] == "bearer"
    assert {parameter["name"] for parameter in operation["parameters"]} == {"slug", "min_validity", "force_refresh"}
    # schemathesis validates the document against the OpenAPI meta-schema
    schemathesis.openapi.from_path(SPEC).validate()


def test_the_token_body_is_closed_and_never_offers_a_refresh_token(spec):
    token = spec["components"]["schemas"]["Token"]
    assert token["additionalProperties"] is False
    assert set(token["required"]) == {
        "connection",
        "access_token",
        "token_type",
        "expires_at",
        "expires_in",
        "scope",
        "extra",
    }
    forbidden = {item["required"][0] for item in token["properties"]["extra"]["not"]["anyOf"]}
    assert {"refresh_token", "id_token"} <= forbidden


def test_every_error_the_code_raises_is_in_the_spec(spec):
    # given every TokenRequestError the endpoint's code can raise
    raised = _raised_errors()
    assert len(raised) >= 9, "the ast scan found too few TokenRequestError calls: did issuing.py move?"
    enum = set(spec["components"]["schemas"]["ErrorCode"]["enum"])
    responses = spec["paths"][TOKEN_PATH]["get"]["responses"]
    for status, code, has_retry_after, line in raised:
        # then its code is in the error enum, and documented under its status
        assert code in enum, f"issuing.py line {line}: {code!r} is not in ErrorCode's enum"
        assert str(status) in responses, f"issuing.py line {line}: status {status} is not documented"
        response = _deref(spec, responses[str(status)])
        assert code in _codes_for(spec, response), f"issuing.py line {line}: {code!r} is not listed under {status}"
        if has_retry_after:
            header = _deref(spec, response["headers"]["Retry-After"])
            assert header["required"] is True, f"{status} sets Retry-After: the spec must say so"


def test_every_error_the_proxy_raises_is_in_the_spec(spec):
    enum = set(spec["components"]["schemas"]["ErrorCode"]["enum"])
    for method in ("get", "post", "put", "patch", "delete"):
        responses = spec["paths"][PROXY_PATH][method]["responses"]
        documented = {
            (int(status), code)
            for status, response in responses.items()
            if status != "default"
            for code in _codes_for(spec, response)
        }
        raised = {(status, code) for status, code, _, _ in _raised_errors(PROXY_MODULES)}
        assert documented == raised, method
        assert {code for _, code in raised} <= enum
        for status in ("424", "429", "503"):
            assert _deref(spec, responses[status]["headers"]["Retry-After"])["required"] is True


def test_the_spec_lists_no_error_the_code_cannot_raise(spec):
    raised = {(status, code) for status, code, _, _ in _raised_errors()}
    enum = set(spec["components"]["schemas"]["ErrorCode"]["enum"])
    assert enum == {code for _, code, _, _ in _raised_errors(PROXY_MODULES)}
    responses = spec["paths"][TOKEN_PATH]["get"]["responses"]
    documented = {
        (int(status), code)
        for status, response in responses.items()
        if status != "200"
        for code in _codes_for(spec, response)
    }
    assert documented == raised


def test_every_token_answer_documents_its_headers(spec):
    responses = spec["paths"][TOKEN_PATH]["get"]["responses"]
    for status, response in responses.items():
        headers = {name: _deref(spec, header) for name, header in response["headers"].items()}
        assert headers["Cache-Control"]["required"] is True, status
        assert headers["Cache-Control"]["schema"]["enum"] == ["no-store"], status
        if status in {"424", "429", "503"}:
            assert headers["Retry-After"]["required"] is True, status
    assert _deref(spec, responses["401"]["headers"]["WWW-Authenticate"])["required"] is True
