"""providers.d/azure.yaml: the address (v1 or deployment path with api-version) and the credential
(api-key header, or an Entra ID token that replaces it). Replies and errors: its recordings."""

from __future__ import annotations

from multidict import CIMultiDict

from engine.spec.loader import load_catalog

from .conftest import ROOT

ENDPOINT = "https://my-resource.openai.azure.com"


def azure(**environ: str):  # type: ignore[no-untyped-def]
    catalog = load_catalog(ROOT, environ={"AZURE_OPENAI_ENDPOINT": ENDPOINT + "/", **environ})
    return catalog.providers["azure"]


def test_v1_path_unless_a_dated_api_version():
    spec = azure(AZURE_OPENAI_API_KEY="key-0123456789")
    assert spec.url("chat", "gpt-4.1", False) == f"{ENDPOINT}/openai/v1/chat/completions"
    assert azure(OPENAI_API_VERSION="v1").url("embeddings", "text-embedding-3-small", False) == f"{ENDPOINT}/openai/v1/embeddings"
    dated = azure(OPENAI_API_VERSION="2025-04-01-preview")
    assert dated.url("chat", "gpt-4.1", True) == (
        f"{ENDPOINT}/openai/deployments/gpt-4.1/chat/completions?api-version=2025-04-01-preview"
    )


def test_api_key_header_or_entra_token():
    spec = azure(AZURE_OPENAI_API_KEY="key-0123456789")
    assert spec.headers_for("gpt-4.1") == {"api-key": "key-0123456789"}
    assert spec.headers_for_token("gpt-4.1", None, "entra-token") == {"Authorization": "Bearer entra-token"}
    grant = spec.auth.grant
    assert spec.auth.scope == "https://cognitiveservices.azure.com/.default"
    assert grant.url({"AZURE_TENANT_ID": "t-1"}) == "https://login.microsoftonline.com/t-1/oauth2/v2.0/token"
    assert grant.client(spec.env_values) is None  # no client variables: the api-key header applies
    assert spec.missing_env() == []


CREDENTIAL = "AZURE_OPENAI_API_KEY or AZURE_TENANT_ID+AZURE_CLIENT_ID+AZURE_CLIENT_SECRET"


def test_ready_only_with_an_endpoint_and_one_whole_credential():
    entra = {"AZURE_TENANT_ID": "t-1", "AZURE_CLIENT_ID": "c-1", "AZURE_CLIENT_SECRET": "s-1"}
    assert azure(**entra).missing_env() == []
    assert azure().missing_env() == [CREDENTIAL]
    partial = azure(AZURE_TENANT_ID="t-1", AZURE_CLIENT_ID="c-1")  # no secret: not a credential
    assert partial.missing_env() == [CREDENTIAL]
    assert partial.setup_hint() == f"set {CREDENTIAL}"
    bare = load_catalog(ROOT, environ={}).providers["azure"]
    assert bare.missing_env() == ["AZURE_OPENAI_ENDPOINT", CREDENTIAL]


def test_error_code_from_the_x_ms_error_code_header():
    spec = azure()
    error = spec.classify_error(404, {"error": {"message": "gone"}}, headers=CIMultiDict({"x-ms-error-code": "DeploymentNotFound"}))
    assert error.kind == "not_found"
    assert spec.classify_error(400, {"error": {"code": "content_filter"}}).kind == "content_filter"
    filtered = {"error": {"innererror": {"code": "ResponsibleAIPolicyViolation"}, "message": "filtered"}}
    assert spec.classify_error(400, filtered).kind == "content_filter"


def test_vertex_needs_a_project_under_either_name():
    key_file = {"GOOGLE_APPLICATION_CREDENTIALS": "/secrets/sa.json"}
    for name in ("vertex", "vertex-anthropic"):
        assert load_catalog(ROOT, environ=key_file).providers[name].missing_env() == [
            "GOOGLE_CLOUD_PROJECT or VERTEXAI_PROJECT"
        ]
        for project in ("GOOGLE_CLOUD_PROJECT", "VERTEXAI_PROJECT"):
            spec = load_catalog(ROOT, environ={**key_file, project: "p-1"}).providers[name]
            assert spec.missing_env() == [], (name, project)
