"""The OpenAPI document as served, and what no route takes: a documented path with another
method is 405 with Allow, anything else a 404 problem document (API Gateway's $default route,
here through the local gateway's router table)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from support import JWT_ISSUER, assert_json_response, assert_problem, media_type
from test_sessions import DISCOVERY, assert_cacheable_json

DOCUMENT = yaml.safe_load((Path(__file__).resolve().parents[2] / "openapi.yaml").read_text())


def test_the_served_document_is_openapi_yaml_with_this_issuer_as_its_server(api):
    served = assert_cacheable_json(api.request("GET", "/openapi.json"))
    expected = dict(DOCUMENT)
    if JWT_ISSUER.startswith(("http://", "https://")):
        expected["servers"] = [{"url": JWT_ISSUER.rstrip("/")}]
    assert served == expected


def test_discovery_links_the_document_as_service_documentation(api):
    body = assert_cacheable_json(api.request("GET", DISCOVERY))
    assert body["service_documentation"] == JWT_ISSUER.rstrip("/") + "/openapi.json", body


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("PUT", "/auth/me", "GET, DELETE"),
    ("GET", "/auth/login", "POST"),
    ("TRACE", "/auth/register", "POST"),
    ("PATCH", "/auth/sessions/3f0e7a52-2f5e-4f3c-9a43-d0c6a8a1c2b1", "DELETE"),
    ("POST", "/.well-known/jwks.json", "GET"),
    ("DELETE", "/openapi.json", "GET"),
])
def test_another_method_on_a_documented_path_is_405_with_its_methods(api, method, path, allow):
    resp = api.request(method, path, body=b"{}", headers={"Content-Type": "application/json"})
    assert_problem(resp, 405, "method_not_allowed")
    assert resp.headers.get("allow") == allow, resp
    assert allow in resp.json()["detail"]


@pytest.mark.parametrize("path", ["/index.html", "/assets/", "/account/", "/auth", "/auth/me/", "/auth/sessions/", "/auth/sessions/a/b", "/nowhere"])
def test_a_path_no_route_has_is_a_404_problem(api, path):
    for method in ("GET", "POST"):
        resp = api.request(method, path)
        assert_problem(resp, 404, "not_found")
        assert "allow" not in resp.headers, resp


def test_a_documented_route_is_never_answered_by_the_fallback(api):
    # Every documented route reaches its own function: none is 405 or a not_found problem.
    for path, item in DOCUMENT["paths"].items():
        for method in item:
            if method not in {"get", "post", "delete"}:
                continue
            concrete = path.replace("{id}", "3f0e7a52-2f5e-4f3c-9a43-d0c6a8a1c2b1").replace("{file}", "app.js")
            resp = api.request(method.upper(), concrete)
            assert resp.status != 405, (method, path, resp)
            if resp.status == 404:
                assert media_type(resp) == "application/problem+json" and resp.json()["code"] == "session_not_found"
            if resp.status == 200 and "pages" in item[method]["tags"]:
                # The pages function's own answer, with its policy.
                assert media_type(resp) in ("text/html", "text/javascript"), resp
                assert resp.headers.get("content-security-policy", "").startswith("default-src 'self'"), resp
            elif resp.status == 200:
                assert_json_response(resp, 200)
