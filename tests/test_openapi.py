"""/openapi.json, /docs and the landing page at /.

The document is checked as OpenAPI 3.1 (openapi-spec-validator) and against the app's own route
table, so a route added without a description fails here. Its schemas are checked to be the ones
the project validates against. The pages are loaded in Debian's chromium (as tests/test_dashboard.py)
with every request intercepted: none may leave the gateway's origin.
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from engine.accounts.store import Store
from engine.config import load_settings
from engine.web.apidoc.openapi import openapi_document
from engine.web.server import create_app

from .conftest import provider_env, spec_tree, start_gateway
from .test_dashboard import CHROMIUM, CHROMIUM_ARGS

ROOT = Path(__file__).resolve().parent.parent
OPENAI_REPLIES = ROOT / "tests" / "providers" / "openai" / "replies"


@pytest.fixture(scope="module")
def app_and_doc(catalog, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("openapi")
    settings = load_settings(environ={"GAUD_AUTH_ENABLED": "false", "GAUD_DATABASE_URL": f"sqlite:///{tmp / 'o.db'}"})
    app = create_app(catalog, settings)
    with TestClient(app) as client:
        response = client.get("/openapi.json")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    return app, response.json()


def routed_operations(app) -> set[tuple[str, str]]:
    """(method, OpenAPI path) of every route of the starlette app, read from its route table."""
    found = set()
    for route in app.app.routes:
        if isinstance(route, Route):
            path = re.sub(r"{(\w+):\w+}", r"{\1}", route.path)
            found |= {(method.lower(), path) for method in route.methods if method != "HEAD"}
        elif isinstance(route, Mount):
            found.add(("get", route.path))
        else:  # pragma: no cover - a new kind of route needs a rule in openapi.route_operations
            raise AssertionError(f"unknown route type {route!r}")
    return found


def test_the_document_is_valid_openapi_3_1(app_and_doc):
    _, doc = app_and_doc
    assert doc["openapi"].startswith("3.1")
    validate(doc)  # raises on the first problem
    assert list(OpenAPIV31SpecValidator(doc).iter_errors()) == []
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "A gateway API key (sk-gaud-...)."}
    assert doc["security"] == [{"bearer": []}]


def test_every_route_of_the_app_is_documented_and_nothing_else(app_and_doc):
    app, doc = app_and_doc
    documented = {(method, path) for path, item in doc["paths"].items() for method in item}
    routed = routed_operations(app)
    assert routed == documented
    undocumented = [(m, p) for p, item in doc["paths"].items() for m, op in item.items() if op.get("x-undocumented")]
    assert undocumented == []
    # The client formats' routes come from ingress.d/, the stored replies included.
    for operation in [("post", "/v1/messages"), ("post", "/v1/messages/count_tokens"), ("post", "/v1/responses"),
                      ("get", "/v1/responses/{id}"), ("delete", "/v1/responses/{id}")]:
        assert operation in documented


def test_a_route_without_a_description_is_listed_as_undocumented(catalog):
    async def handler(request):  # pragma: no cover - never called
        return Response()

    routes = [Route("/v1/chat/completions", handler, methods=["POST"]), Route("/v1/brand-new/{x:path}", handler)]
    doc = openapi_document(routes, catalog, "1.2.3")
    assert doc["paths"]["/v1/chat/completions"]["post"].get("x-undocumented") is None
    new = doc["paths"]["/v1/brand-new/{x}"]["get"]
    assert new["x-undocumented"] is True and new["parameters"][0]["name"] == "x"
    assert doc["info"]["version"] == "1.2.3"


def test_public_and_admin_operations_say_so(app_and_doc):
    _, doc = app_and_doc
    paths = doc["paths"]
    for path in ("/", "/health", "/openapi.json", "/docs"):
        assert paths[path]["get"]["security"] == [], path
    assert "security" not in paths["/v1/chat/completions"]["post"]  # the document's default: bearer
    assert "admin key" in paths["/admin/keys"]["post"]["description"]
    # A format that takes its key in another header documents that header as a scheme too.
    messages = paths["/v1/messages"]["post"]
    assert {"header.x-api-key": []} in messages["security"]
    assert doc["components"]["securitySchemes"]["header.x-api-key"]["in"] == "header"


def test_chat_schemas_are_the_oracle_copy():
    """The bundled OpenAI schemas are the tests' own oracle, byte for byte, not a second hand-kept copy."""
    bundled = (ROOT / "schemas" / "openai" / "chat_schemas.json").read_bytes()
    assert bundled == (ROOT / "tests" / "oracles" / "chat_schemas.json").read_bytes()


def schema_validator(doc, name: str) -> Draft202012Validator:
    registry = Registry().with_resource("urn:doc", Resource(contents=doc, specification=DRAFT202012))
    return Draft202012Validator({"$ref": f"urn:doc#/components/schemas/{name}"}, registry=registry)


def operation_schema(doc, method: str, path: str, part: str) -> str:
    operation = doc["paths"][path][method]
    content = operation["requestBody"]["content"] if part == "request" else operation["responses"]["200"]["content"]
    return content["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]


def reference(name: str):
    """One of OpenAI's own replies (tests/providers/openai/replies/): what the gateway emits."""
    return json.loads((OPENAI_REPLIES / name).read_text())


def test_documented_schemas_accept_real_requests_and_replies(app_and_doc):
    _, doc = app_and_doc
    request = schema_validator(doc, operation_schema(doc, "post", "/v1/chat/completions", "request"))
    assert request.is_valid({"model": "fast", "messages": [{"role": "user", "content": "Hi"}], "stream": True})
    assert not request.is_valid({"model": "fast"})  # no messages
    assert not request.is_valid({"model": "fast", "messages": [{"role": "robot", "content": "Hi"}]})
    reply = schema_validator(doc, operation_schema(doc, "post", "/v1/chat/completions", "reply"))
    for name in ("chat_completion_text.json", "chat_completion_tool_calls_parallel.json", "chat_completion_length.json"):
        body = reference(name)
        assert list(reply.iter_errors(body)) == [], name
    assert not reply.is_valid({**body, "object": "chat.completion.chunk"})
    embeddings = schema_validator(doc, operation_schema(doc, "post", "/v1/embeddings", "request"))
    assert embeddings.is_valid({"model": "e", "input": ["a", [1, 2]], "encoding_format": "base64"})
    assert not embeddings.is_valid({"model": "e", "input": [], "encoding_format": "float"})
    assert not embeddings.is_valid({"model": "e", "input": "a", "encoding_format": "hex"})
    embedded = schema_validator(doc, operation_schema(doc, "post", "/v1/embeddings", "reply"))
    assert list(embedded.iter_errors(reference("embeddings.json"))) == []
    models = schema_validator(doc, operation_schema(doc, "get", "/v1/models", "reply"))
    assert list(models.iter_errors(reference("models_list.json"))) == []
    error = schema_validator(doc, "Error")
    for name in ("error_400_invalid_request.json", "error_429_rate_limit.json"):
        assert list(error.iter_errors(reference(name))) == [], name
    assert not error.is_valid({"message": "not wrapped"})


def test_format_schemas_come_from_the_ingress_specs(app_and_doc, catalog):
    _, doc = app_and_doc
    spec = next(s for s in catalog.ingress.values() if "count_tokens" in s.routes)
    name = operation_schema(doc, "post", spec.routes["chat"], "request")
    schema = doc["components"]["schemas"][name]
    assert sorted(schema["required"]) == sorted(spec.required)
    validator = schema_validator(doc, name)
    body = {"model": "m", "messages": [], "max_tokens": 5}
    body = {field: body.get(field, "x") for field in spec.required}
    assert validator.is_valid(body)
    for field in spec.required:
        assert not validator.is_valid({k: v for k, v in body.items() if k != field}), field
    # The reply's constants are what the reply mapping writes; the error envelope is the spec's.
    reply = doc["components"]["schemas"][operation_schema(doc, "post", spec.routes["chat"], "reply")]
    constants = {r["to"][1:]: r["const"] for r in spec.data["response"]["map"] if "const" in r and "when" not in r
                 and r["to"].count("/") == 1}
    for field, value in constants.items():
        if sum(1 for r in spec.data["response"]["map"] if r.get("to") == f"/{field}") == 1:
            assert reply["properties"][field] == {"const": value}
    error = doc["paths"][spec.routes["chat"]]["post"]["responses"]["default"]["content"]["application/json"]["schema"]
    envelope = doc["components"]["schemas"][error["$ref"].rsplit("/", 1)[1]]
    assert sorted(envelope["required"]) == sorted(spec.data["errors"]["envelope"])


# -- the pages, through a real gateway with auth on -----------------------------------------------


@pytest.fixture(scope="module")
def served(fake_upstream_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("landing")
    db = tmp / "gaud.db"
    store = Store(f"sqlite:///{db}")
    store.migrate()
    keys = {
        "root": store.create_key("root", role="admin")[0],
        "mia": store.create_key("mia", models=("fast",))[0],
    }
    revoked, info = store.create_key("gone")
    store.revoke_key(info.lookup)
    keys["gone"] = revoked
    store.close()
    env = {
        **provider_env(fake_upstream_server.url),
        "GAUD_SPECS_DIR": str(spec_tree(tmp)),
        "GAUD_AUTH_ENABLED": "true",
        "GAUD_DATABASE_URL": f"sqlite:///{db}",
    }
    running = start_gateway(env, tmp / "gateway.log")
    yield SimpleNamespace(url=running.url, keys=keys)
    running.process.send_signal(signal.SIGTERM)
    running.process.wait(20)


def landing(served, key: str | None = None, accept: str = "application/json") -> httpx.Response:
    headers = {"accept": accept}
    if key:
        headers["authorization"] = f"Bearer {key}"
    return httpx.get(f"{served.url}/", headers=headers)


def test_the_landing_page_lists_aliases_only_for_a_valid_key(served):
    anonymous = landing(served)
    assert anonymous.status_code == 200
    body = anonymous.json()
    assert body["name"] == "gaud-engine" and body["version"]
    assert body["links"] == {"docs": "/docs", "openapi": "/openapi.json", "ui": "/ui/", "health": "/health"}
    assert "models" not in body
    for bad in ("sk-gaud-000000000000" + "x" * 32, served.keys["gone"], "not-a-key"):
        refused = landing(served, bad)
        assert refused.status_code == 200 and "models" not in refused.json()
    assert landing(served, served.keys["mia"]).json()["models"] == ["fast"]  # her allow-list
    listed = httpx.get(f"{served.url}/v1/models", headers={"authorization": f"Bearer {served.keys['root']}"}).json()
    admin = landing(served, served.keys["root"]).json()["models"]
    assert "fast" in admin and set(admin) == {m["id"] for m in listed["data"] if m["owned_by"] == "gaud-engine"}


def test_the_landing_page_is_html_for_browsers(served):
    page = landing(served, accept="text/html,application/xhtml+xml,*/*;q=0.8")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert 'href="/docs"' in page.text and 'href="/ui/"' in page.text and 'href="/health"' in page.text
    assert 'id="aliases"' not in page.text
    keyed = landing(served, served.keys["mia"], accept="text/html")
    assert re.search(r'<ul id="aliases"><li><code>fast</code></li></ul>', keyed.text)


def test_docs_and_openapi_are_public_and_assets_are_a_closed_set(served):
    assert httpx.get(f"{served.url}/openapi.json").status_code == 200
    assert httpx.get(f"{served.url}/v1/models").status_code == 401  # while the API itself needs a key
    docs = httpx.get(f"{served.url}/docs")
    assert docs.status_code == 200 and '<script src="/docs/docs.js"' in docs.text
    assert httpx.get(f"{served.url}/docs/docs.js").headers["content-type"].startswith("text/javascript")
    for name in ("pages.py", "..%2Fpages.py", "docs.html", "..%2F..%2Fserver.py"):
        missing = httpx.get(f"{served.url}/docs/{name}")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_url", name
    assert httpx.post(f"{served.url}/openapi.json").status_code == 405


def browser_visit(served, path: str, headers: dict[str, str] | None = None):
    """Load `path` in chromium; returns (page text, every URL requested, console errors, page counts)."""
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright Python package")
    requested: list[str] = []
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(extra_http_headers=headers or {})
            page = context.new_page()
            page.set_default_timeout(15_000)

            def intercept(route):
                requested.append(route.request.url)
                if route.request.url.startswith(served.url + "/"):
                    route.continue_()
                else:
                    route.abort()

            page.route("**/*", intercept)
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{served.url}{path}")
            if path == "/docs":
                page.wait_for_selector("#schemas details")
                sync_api.expect(page.locator("#status")).to_have_count(0)
            counts = {"operations": page.locator("#operations details.op").count(),
                      "schemas": page.locator("#schemas details.op").count()}
            if path == "/docs":  # open one operation and follow its schema link
                page.click("#op-post--v1-chat-completions > summary")
                page.click("#op-post--v1-chat-completions a[href='#schema-CreateChatCompletionRequest']")
                sync_api.expect(page.locator("#schema-CreateChatCompletionRequest")).to_have_attribute("open", "")
            text = page.inner_text("body")
        finally:
            browser.close()
    return text, requested, errors, counts


def test_docs_render_in_a_browser_without_external_requests(served):
    doc = httpx.get(f"{served.url}/openapi.json").json()
    text, requested, errors, counts = browser_visit(served, "/docs")
    assert errors == []
    assert requested and all(url.startswith(served.url + "/") for url in requested), requested
    assert f"{served.url}/openapi.json" in requested and f"{served.url}/docs/docs.js" in requested
    assert counts["operations"] == sum(len(item) for item in doc["paths"].values())
    assert counts["schemas"] == len(doc["components"]["schemas"])
    assert "/v1/chat/completions" in text and "Create a chat completion" in text
    assert f"gaud-engine {doc['info']['version']}" in text


def test_the_landing_page_in_a_browser(served):
    text, requested, errors, _ = browser_visit(served, "/")
    assert errors == [] and all(url.startswith(served.url + "/") for url in requested), requested
    assert "API documentation" in text and "Dashboard" in text and "fast" not in text.split()
    text, requested, errors, _ = browser_visit(served, "/", {"authorization": f"Bearer {served.keys['mia']}"})
    assert errors == [] and all(url.startswith(served.url + "/") for url in requested), requested
    assert "Aliases you may call" in text and "fast" in text.split()
