"""The routes are one list: openapi.yaml's paths and methods. The functions' router (Cargo.toml,
read by cargo lambda watch and the local gateway) and the SAM template's routes must name the
same ones, openapi.yaml must hold together (every operation documented alike), and the contract
run's hooks must give a real token to every operation that takes one."""

import ast
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
DOCUMENT = yaml.safe_load((ROOT / "openapi.yaml").read_text())


def documented():
    return {(m.upper(), path) for path, item in DOCUMENT["paths"].items() for m in item if m in METHODS}


def test_the_router_has_the_documented_routes_and_a_default():
    router = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["metadata"]["lambda"]["watch"]["router"]
    routes = {(e["method"].upper(), path) for path, entries in router.items() for e in entries}
    assert ("*", "$default") in routes
    assert routes - {("*", "$default")} == documented()


def test_the_template_has_the_documented_routes_and_a_default():
    keys = set(re.findall(r"^\s+RouteKey: (\S+(?: \S+)?)$", (ROOT / "template.yaml").read_text(), re.M))
    # The JWT authorizer's example route is the template's own, not the auth API's.
    keys -= {"GET /example/hello", "$default"}
    assert {tuple(k.split(" ", 1)) for k in keys} == documented()


def test_every_operation_has_an_id_a_summary_a_tag_and_the_errors_of_its_kind():
    ids = []
    for path, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            ids.append(operation["operationId"])
            assert operation.get("summary") and operation.get("tags"), (method, path)
            statuses = set(map(str, operation["responses"]))
            # What every route with a body answers to a body that is not JSON, too big, or not sent as JSON.
            if "requestBody" in operation:
                assert {"400", "413", "415"} <= statuses, (method, path, statuses)
            if operation.get("security", DOCUMENT.get("security")):
                assert "401" in statuses, (method, path)
    assert len(ids) == len(set(ids))


def test_the_contract_hooks_give_tokens_to_every_bearer_operation():
    # hooks.py reads its settings at import, so its list is read from its source.
    tree = ast.parse((ROOT / "scripts" / "contract" / "hooks.py").read_text())
    bearer = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "BEARER" for t in node.targets)
    )
    secured = {
        operation["operationId"]
        for item in DOCUMENT["paths"].values()
        for method, operation in item.items()
        if method in METHODS and operation.get("security", DOCUMENT.get("security"))
    }
    assert sorted(bearer) == sorted(secured)
