"""The OpenAPI document and its pages: local assets only, the Bearer scheme, examples, errors."""

from __future__ import annotations

import re

import pytest
from pydantic import BaseModel

from promptops.server import schemas

PAGES = ("/docs", "/redoc")


@pytest.mark.parametrize("page", PAGES)
def test_doc_pages_use_only_local_assets(client, page):
    r = client.get(page)
    assert r.status_code == 200 and "text/html" in r.headers["content-type"], r.text
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']|url:\s*['"]([^'"]+)['"]""", r.text)
    urls += re.findall(r"""spec-url=["']([^"']+)["']""", r.text)
    found = [u for pair in urls for u in (pair if isinstance(pair, tuple) else (pair,)) if u]
    assert found, r.text
    assert all(u.startswith("/") and not u.startswith("//") for u in found), found
    assert "http://" not in r.text and "https://" not in r.text, r.text
    for url in found:
        asset = client.get(url)
        assert asset.status_code == 200 and asset.content, url


def test_redoc_may_load_only_local_images(client):
    # its bundle draws a logo from a CDN otherwise (tests/server/test_browser.py sees no request)
    assert client.get("/redoc").headers["content-security-policy"] == "img-src 'self' data:"


def test_the_document_declares_the_bearer_scheme(client):
    doc = client.get("/openapi.json").json()
    scheme = doc["components"]["securitySchemes"]["HTTPBearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer"), scheme
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            public = path == "/healthz"
            assert ("security" in op) is not public, (method, path)
            if not public:
                assert op["security"] == [{"HTTPBearer": []}], (method, path)


def test_each_route_lists_only_its_errors(client):
    paths = client.get("/openapi.json").json()["paths"]

    def statuses(method: str, path: str) -> set[int]:
        return {int(s) for s in paths[path][method]["responses"] if int(s) >= 400}

    assert statuses("get", "/healthz") == {503}
    assert statuses("get", "/v1/prompts") == {401, 403, 422, 503}
    assert 409 not in statuses("post", "/v1/prompts/{name}/serve")
    assert 413 not in statuses("get", "/v1/prompts/{name}")
    assert 409 in statuses("post", "/v1/experiments/{experiment_id}/promote")
    assert 404 not in statuses("get", "/v1/audit")
    error = paths["/v1/feedback"]["post"]["responses"]["404"]
    assert error["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorPublic")
    assert "does not exist" in error["description"]


def public_models() -> list[type[BaseModel]]:
    return [
        m
        for m in vars(schemas).values()
        if isinstance(m, type)
        and issubclass(m, BaseModel)
        and m.__module__.startswith(f"{schemas.__name__}.")
        and m not in (schemas.Strict, schemas.View)
    ]


@pytest.mark.parametrize("model", public_models(), ids=lambda m: m.__name__)
def test_every_field_is_described(model):
    schema = model.model_json_schema()
    undescribed = [name for name, prop in schema["properties"].items() if not prop.get("description")]
    assert not undescribed, (model.__name__, undescribed)


@pytest.mark.parametrize(
    "model",
    [
        m
        for m in public_models()
        if m.__name__.endswith(("Create", "Public")) and not issubclass(m, schemas.View)
    ],
    ids=lambda m: m.__name__,
)
def test_every_request_and_response_model_has_valid_examples(model):
    examples = model.model_json_schema().get("examples")
    assert examples, model.__name__
    for example in examples:
        model.model_validate(example)


def test_request_models_still_refuse_unknown_fields():
    with pytest.raises(ValueError, match="extra"):
        schemas.ServeCreate.model_validate({"variables": {}, "unit": "x"})


def test_gateway_routes_list_the_provider_errors(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/prompts/{name}/complete", "/v1/chat/completions"):
        responses = paths[path]["post"]["responses"]
        assert {"429", "502", "504"} <= set(responses) and "409" not in responses, path
    chat = paths["/v1/chat/completions"]["post"]["responses"]["502"]
    assert "OpenAI's error shape" in chat["description"] and "content" not in chat, chat
