"""No request is served at $0 unless its model is declared free (issue 18, item 1).

A `provider/model` that no spec lists is refused (404 model_not_found, nothing sent upstream)
unless `routing.allow_unlisted_models` is on; then it is billed, and reserved against budgets, at
the provider's highest listed price, and marked estimated (response header and audit row).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import sqlalchemy as sa

from engine.accounts.store import MIGRATIONS, Store, audit_log, m006_audit_price_estimated, m007_audit_usage_estimated
from engine.errors import NotFound
from engine.pipeline.pricing import FREE, Price, ceiling_price, price_for, quote_for
from engine.pipeline.routing import Router
from engine.spec.catalog import Catalog
from engine.spec.models import Target, resolve_model
from engine.spec.provider import ModelInfo

from .conftest import RunningGateway, pg_store, provider_env, spec_tree, start_gateway

M = 1_000_000
UNLISTED = "openai/some-unlisted-model"
HELLO = [{"role": "user", "content": "Hi"}]
# OpenAI's ceiling over the models providers.d/openai.yaml and models.d/openai.yaml list: input $30/M,
# output $112.5/M and cache write $37.5/M (gpt-6-rosalind above 272K prompt tokens), cached read $30/M
# (gpt-4-0613, whose cached reads default to its input).
CEILING = Price(input=30.0, output=112.5, cached_input=30.0, cache_write=37.5)
# chat_completion_text.json reports 19 prompt and 14 completion tokens.
UNLISTED_COST = (19 * 30 + 14 * 112.5) / M  # 2_145 millionths
GPT4O_COST = (19 * 2.5 + 14 * 10) / M
# The budget: 2.5 requests' worth at the ceiling price.
BUDGET = 2.5 * UNLISTED_COST


# -- prices: the ceiling and the quote -------------------------------------------------------------


def test_ceiling_is_each_price_at_its_maximum_over_the_providers_listed_models(catalog: Catalog) -> None:
    spec = catalog.providers["openai"]
    prices = [p for m in spec.models if (p := price_for(catalog, "openai", m)) is not None]
    assert len(prices) == len(spec.models)  # every listed OpenAI model is priced
    every = [x for p in prices for x in (p, *(tier for _, tier in p.tiers))]  # a tier's prices count too
    expected = Price(*(max(getattr(p, f) for p in every) for f in ("input", "output", "cached_input", "cache_write")))
    assert ceiling_price(catalog, "openai") == expected == CEILING


def test_ceiling_includes_pricing_tiers(catalog: Catalog) -> None:
    # gemini-pro-latest: $2/$12 up to 200K prompt tokens, $4/$18 above: input and cache write (the
    # tier's input) are the tier's; output $20/M is gemini-2.5-pro-preview-tts's, cached read $2.50/M
    # gemini-2.5-computer-use-preview-10-2025's tier (no cached price: its input).
    assert ceiling_price(catalog, "gemini") == Price(input=4.0, output=20.0, cached_input=2.5, cache_write=4.0)


def test_a_provider_with_only_free_models_has_no_ceiling(catalog: Catalog) -> None:
    assert all(m.free and m.free_reason for m in catalog.providers["ollama"].models.values())
    assert ceiling_price(catalog, "ollama") is None
    assert ceiling_price(catalog, "no-such-provider") is None


def test_quotes(catalog: Catalog, caplog: pytest.LogCaptureFixture) -> None:
    spec = catalog.providers["openai"]
    listed = resolve_model(catalog, "openai/gpt-4o")[0]
    assert quote_for(catalog, listed) == quote_for(catalog, listed) is not None
    own = quote_for(catalog, listed)
    assert own is not None and own.price == price_for(catalog, "openai", "gpt-4o") and not own.estimated

    free = resolve_model(catalog, "ollama/llama3.2")[0]
    assert quote_for(catalog, free) is not None and quote_for(catalog, free).price == FREE  # type: ignore[union-attr]

    unlisted = resolve_model(catalog, UNLISTED, allow_unlisted=True)[0]
    assert not unlisted.listed
    quote = quote_for(catalog, unlisted)
    assert quote is not None and quote.estimated and quote.price == CEILING

    # A listed model whose price went missing (a tree that skipped `validate`) is not free: it is
    # logged and billed at the ceiling, estimated.
    caplog.set_level(logging.ERROR, logger="gaud.pricing")
    unpriced = Target(spec, "gpt-unpriced", ModelInfo("gpt-unpriced"))
    quote = quote_for(catalog, unpriced)
    assert quote is not None and quote.estimated and quote.price == CEILING
    assert "no price for openai/gpt-unpriced" in caplog.text

    # Nothing to estimate from: no quote, so it is never served.
    assert quote_for(catalog, resolve_model(catalog, "ollama/mystery", allow_unlisted=True)[0]) is None
    assert quote_for(catalog, Target(catalog.providers["ollama"], "mystery", ModelInfo("mystery"))) is None


# -- planning ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [UNLISTED, "anthropic/claude-nonexistent", "openai/gpt-4o-typo"])
def test_unlisted_provider_model_is_not_found_by_default(catalog: Catalog, name: str) -> None:
    with pytest.raises(NotFound, match="is not listed") as raised:
        Router(catalog).plan({"model": name, "messages": HELLO})
    assert (raised.value.status, raised.value.code, raised.value.param) == (404, "model_not_found", "model")


def test_listed_models_and_their_aliases_still_resolve_as_provider_model(catalog: Catalog) -> None:
    router = Router(catalog)
    assert [t.target.name for t in router.plan({"model": "openai/gpt-4o", "messages": HELLO}).targets] == ["openai/gpt-4o"]
    sonnet = catalog.providers["anthropic"].models["claude-sonnet-4-20250514"]
    alias = sonnet.aliases[0]
    plan = router.plan({"model": f"anthropic/{alias}", "messages": HELLO})
    assert [(t.target.name, t.target.listed) for t in plan.targets] == [("anthropic/claude-sonnet-4-20250514", True)]


def test_allowed_unlisted_model_is_planned_unlisted(catalog: Catalog) -> None:
    router = Router(catalog, allow_unlisted=True)
    (planned,) = router.plan({"model": UNLISTED, "messages": HELLO}).targets
    assert (planned.target.name, planned.target.listed) == (UNLISTED, False)
    assert router.rebound(catalog).allow_unlisted  # a reload keeps the setting


def test_allowed_unlisted_model_of_a_provider_without_prices_is_still_refused(catalog: Catalog) -> None:
    with pytest.raises(NotFound, match="no priced model"):
        Router(catalog, allow_unlisted=True).plan({"model": "ollama/some-unlisted-model", "messages": HELLO})


def test_unknown_provider_prefix_is_still_not_found(catalog: Catalog) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        Router(catalog, allow_unlisted=True).plan({"model": "nobody/some-model", "messages": HELLO})


# -- the audit column ------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    import os

    if request.param == "sqlite":
        created = Store(f"sqlite:///{tmp_path / 'store.db'}")
        yield created
        created.close()
        return
    url = os.environ.get("GAUD_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("set GAUD_TEST_POSTGRES_URL to test on PostgreSQL")
    yield from pg_store(url)  # type: ignore[misc]


def _record(request_id: str, **fields: object) -> dict[str, object]:
    return {"request_id": request_id, "ts": 1.0, "user_id": 1, "user_name": "u", "alias": UNLISTED,
            "deployment": UNLISTED, "status": 200, "cost": 0.5, **fields}


@pytest.mark.parametrize(("migration", "column"), [
    (m006_audit_price_estimated, "price_estimated"), (m007_audit_usage_estimated, "usage_estimated"),
])
def test_migration_adds_an_estimate_flag_to_an_existing_audit_log(store: Store, migration, column) -> None:
    """A database of the release before: the column is added, old rows read as not estimated."""
    assert migration in MIGRATIONS
    store.migrate()
    with store.engine.begin() as conn:  # back to the previous release's schema, with one old row
        conn.execute(sa.text(f"ALTER TABLE audit_log DROP COLUMN {column}"))
        conn.execute(sa.text(f"DELETE FROM schema_migrations WHERE name = '{migration.__name__}'"))
        conn.execute(sa.text(
            "INSERT INTO audit_log (request_id, ts, attempts, status, prompt_tokens, completion_tokens, "
            "cached_tokens, cost, stream, cache_hit) VALUES ('old', 1, 1, 200, 1, 1, 0, 0.1, false, false)"
        ))
    assert store.migrate() == [migration.__name__]
    assert store.migrate() == []
    assert store.write_audit([_record("new", **{column: True}), _record("listed")]) == 2
    rows = {r["request_id"]: r[column] for r in store.audit_records()}
    assert rows == {"old": False, "new": True, "listed": False}


def test_a_fresh_database_has_the_column_and_batches_fit_sqlite(store: Store) -> None:
    from engine.accounts.store import AUDIT_FIELDS, AUDIT_ROWS_PER_INSERT

    store.migrate()
    assert "price_estimated" in {c["name"] for c in sa.inspect(store.engine).get_columns("audit_log")}
    assert AUDIT_ROWS_PER_INSERT * len(AUDIT_FIELDS) <= 999
    n = AUDIT_ROWS_PER_INSERT + 3
    assert store.write_audit([_record(f"r{i}", price_estimated=i % 2 == 0) for i in range(n)]) == n
    with store.engine.connect() as conn:
        flags = [r[0] for r in conn.execute(sa.select(audit_log.c.price_estimated).order_by(audit_log.c.id))]
    assert flags == [i % 2 == 0 for i in range(n)]


# -- end to end: a budgeted member through a running gateway, with the openai SDK -------------------


def _open_store(db: Path) -> Store:
    store = Store(f"sqlite:///{db}")
    store.migrate()
    return store


def _start(tmp: Path, upstream_url: str, *, allow: bool) -> tuple[RunningGateway, str]:
    store = _open_store(tmp / "gaud.db")
    key, _ = store.create_key("penny", budget_daily=BUDGET)
    store.close()
    env = {
        "GAUD_SPECS_DIR": str(spec_tree(tmp, retry="false", fallback="false")),
        "GAUD_AUTH_ENABLED": "true",
        "GAUD_DATABASE_URL": f"sqlite:///{tmp / 'gaud.db'}",
        **provider_env(upstream_url),
    }
    if allow:
        env["GAUD_ROUTING_ALLOW_UNLISTED_MODELS"] = "true"
    return start_gateway(env, tmp / "gateway.log"), key


def _stop(running: RunningGateway) -> None:
    if running.process.poll() is None:
        running.process.send_signal(signal.SIGTERM)
    running.process.wait(20)  # the audit records are flushed by then


def _client(running: RunningGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{running.url}/v1", api_key=key, max_retries=0, timeout=20)


def test_unlisted_model_is_refused_without_an_upstream_call(fake_upstream_server, upstream, tmp_path) -> None:
    running, key = _start(tmp_path, fake_upstream_server.url, allow=False)
    client = _client(running, key)
    try:
        upstream.reply_fixture("openai", "chat_completion_text.json")  # there if anything leaked through
        for stream in (False, True):
            with pytest.raises(openai.NotFoundError) as raised:
                client.chat.completions.create(model=UNLISTED, messages=HELLO, max_tokens=14, stream=stream)
            error = raised.value.body
            assert isinstance(error, dict)
            assert (error["code"], error["param"]) == ("model_not_found", "model")
            assert UNLISTED in error["message"]
        with pytest.raises(openai.NotFoundError):
            client.embeddings.create(model="openai/some-unlisted-embedding", input="hello")
        with pytest.raises(openai.NotFoundError):  # the budget does not matter: unlisted is unlisted
            client.chat.completions.create(model="anthropic/some-unlisted-model", messages=HELLO, max_tokens=1)
        assert upstream.requests == []
        # A listed model is served as before, at its own price, not estimated.
        raw = client.chat.completions.with_raw_response.create(model="openai/gpt-4o", messages=HELLO, max_tokens=14)
        assert raw.parse().choices[0].message.content
        assert "x-gaud-cost-estimated" not in raw.headers
        assert float(raw.headers["x-gaud-cost"]) == pytest.approx(GPT4O_COST)
        assert len(upstream.requests) == 1
    finally:
        _stop(running)
    store = _open_store(tmp_path / "gaud.db")
    try:
        records = store.audit_records()
    finally:
        store.close()
    refused = [r for r in records if r["status"] == 404]
    assert len(refused) == 4 and all(r["cost"] == 0 and not r["price_estimated"] for r in refused)
    (served,) = [r for r in records if r["status"] == 200]
    assert served["cost"] == pytest.approx(GPT4O_COST) and served["price_estimated"] is False


def test_allowed_unlisted_model_is_billed_at_the_ceiling_until_the_budget_is_spent(
    fake_upstream_server, upstream, tmp_path
) -> None:
    running, key = _start(tmp_path, fake_upstream_server.url, allow=True)
    client = _client(running, key)
    try:
        upstream.reply_fixture("openai", "chat_completion_text.json")
        raw = client.chat.completions.with_raw_response.create(model=UNLISTED, messages=HELLO, max_tokens=14)
        assert raw.parse().choices[0].message.content
        assert raw.headers["x-gaud-cost-estimated"] == "true"
        assert float(raw.headers["x-gaud-cost"]) == pytest.approx(UNLISTED_COST)
        assert upstream.last().body["model"] == "some-unlisted-model"

        # A stream says so with its headers, before any cost is known.
        upstream.reply_fixture("openai", "stream_include_usage.sse")
        raw_stream = client.chat.completions.with_raw_response.create(
            model=UNLISTED, messages=HELLO, max_tokens=14, stream=True, stream_options={"include_usage": True}
        )
        assert raw_stream.headers["x-gaud-cost-estimated"] == "true"
        chunks = list(raw_stream.parse())
        usage = chunks[-1].usage
        assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (19, 6)
        stream_cost = (19 * CEILING.input + 6 * CEILING.output) / M
        assert usage.model_extra == {"cost": pytest.approx(stream_cost)}

        # Spent 3_390 of 5_362.5 millionths: the next reservation (a token or so of prompt at $30/M
        # plus 14 output tokens at $112.5/M, ~1_600) still fits; after it the budget is spent.
        for _ in range(3):
            upstream.reply_fixture("openai", "chat_completion_text.json")
        third = client.chat.completions.with_raw_response.create(model=UNLISTED, messages=HELLO, max_tokens=14)
        assert third.headers["x-gaud-cost-estimated"] == "true"
        with pytest.raises(openai.RateLimitError) as raised:
            client.chat.completions.create(model=UNLISTED, messages=HELLO, max_tokens=14)
        assert isinstance(raised.value.body, dict) and raised.value.body["code"] == "budget_exceeded"
        assert len(upstream.requests) == 3  # the refused request never reached the upstream
        # A listed model on the same budget is refused too: the estimated spend counts.
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="openai/gpt-4o", messages=HELLO, max_tokens=14)
        assert len(upstream.requests) == 3
    finally:
        _stop(running)
    store = _open_store(tmp_path / "gaud.db")
    try:
        records = store.audit_records()
        spent = store.spent_since(store.ensure_user("penny"), 0)
    finally:
        store.close()
    served = [r for r in records if r["status"] == 200]
    assert [(r["deployment"], r["stream"], r["price_estimated"]) for r in served] == [
        (UNLISTED, False, True), (UNLISTED, True, True), (UNLISTED, False, True)
    ]
    assert [r["cost"] for r in served] == [pytest.approx(c) for c in (UNLISTED_COST, stream_cost, UNLISTED_COST)]
    refused = [r for r in records if r["status"] == 429]
    assert len(refused) == 2 and all(r["error_kind"] == "budget_exceeded" and r["cost"] == 0 for r in refused)
    assert spent == pytest.approx(2 * UNLISTED_COST + stream_cost)
    assert BUDGET <= spent <= BUDGET + UNLISTED_COST  # over by less than one request, then refused


def test_allowed_unlisted_embeddings_and_free_providers(fake_upstream_server, upstream, tmp_path) -> None:
    running, key = _start(tmp_path, fake_upstream_server.url, allow=True)
    client = _client(running, key)
    try:
        upstream.reply_fixture("openai", "embeddings.json")
        raw = client.embeddings.with_raw_response.create(
            model="openai/some-unlisted-embedding", input=["hello", "world"]
        )
        assert raw.headers["x-gaud-cost-estimated"] == "true"
        assert float(raw.headers["x-gaud-cost"]) == pytest.approx(9 * CEILING.input / M)  # 9 prompt tokens at the ceiling
        # Ollama lists only free models: nothing to estimate from, so still refused, upstream untouched.
        response = httpx.post(f"{running.url}/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                              json={"model": "ollama/some-unlisted-model", "messages": HELLO})
        assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
        assert "no priced model" in response.json()["error"]["message"]
        assert len(upstream.requests) == 1
    finally:
        _stop(running)
