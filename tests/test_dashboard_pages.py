"""The dashboard's pieces one by one: form reading, the keys form, the health rows, the overview's
windows, and the app's wiring (stylesheet, unknown pages). tests/test_dashboard.py drives the whole
dashboard through a running gateway."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.requests import Request
from starlette.testclient import TestClient

from engine.accounts.store import Store
from engine.web.dashboard import dashboard_app
from engine.web.dashboard.forms import FormError, money_field, same_origin
from engine.web.dashboard.health import deployment_rows, health_data, refresh_seconds
from engine.web.dashboard.keys import keys_notice, new_key_fields
from engine.web.dashboard.overview import overview_data


def request(headers: dict[str, str] | None = None, query: str = "") -> Request:
    raw = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": raw, "query_string": query.encode()})


@pytest.fixture
def store(tmp_path: Path) -> Any:
    store = Store(f"sqlite:///{tmp_path / 'd.db'}")
    store.migrate()
    yield store
    store.close()


# -- forms -----------------------------------------------------------------------------------------


def test_money_fields_are_blank_or_non_negative_usd() -> None:
    assert money_field({"budget_daily": " $2.5 "}, "budget_daily") == 2.5
    assert money_field({"budget_daily": ""}, "budget_daily") is None
    assert money_field({}, "budget_daily") is None
    for bad in ("-1", "ten", "inf", "nan"):
        with pytest.raises(FormError) as caught:
            money_field({"budget_daily": bad}, "budget_daily")
        assert caught.value.status == 400 and caught.value.message.startswith("Budget daily must be")


def test_same_origin_trusts_origin_then_referer_and_never_null() -> None:
    host = {"host": "gw.example:8080"}
    assert same_origin(request(host))  # a client that sends neither
    assert same_origin(request({**host, "origin": "https://gw.example:8080"}))
    assert not same_origin(request({**host, "origin": "https://evil.example"}))
    assert not same_origin(request({**host, "origin": "null"}))
    assert same_origin(request({**host, "referer": "http://gw.example:8080/ui/keys"}))
    assert not same_origin(request({**host, "origin": "http://evil.example", "referer": "http://gw.example:8080/"}))
    assert not same_origin(request({**host, "referer": "ftp://gw.example:8080/"}))
    assert not same_origin(request({"origin": "http://gw.example:8080"}))  # no Host: nothing to match


# -- keys ------------------------------------------------------------------------------------------


def test_the_new_key_form_needs_a_user_and_a_known_role() -> None:
    assert new_key_fields({"user": " bot ", "budget_monthly": "40"}) == (
        "bot", {"role": "member", "budget_daily": None, "budget_monthly": 40.0})
    assert new_key_fields({"user": "ops", "role": "admin"})[1]["role"] == "admin"
    for form in ({"user": ""}, {"user": "x" * 201}, {"user": "tab\there"}, {"user": "x", "role": "owner"},
                 {"user": "x", "budget_daily": "-1"}):
        with pytest.raises(FormError):
            new_key_fields(form)


def test_the_keys_page_says_what_the_last_change_did() -> None:
    assert "revoked" in (keys_notice(request(query="revoked=0123456789ab")) or "")
    assert keys_notice(request(query="revoked=not-a-lookup")) is None
    assert "Budgets updated" in (keys_notice(request(query="budgets=1")) or "")
    assert keys_notice(request()) is None


# -- health ----------------------------------------------------------------------------------------


def provider(name: str, missing: list[str]) -> SimpleNamespace:
    return SimpleNamespace(name=name, description=f"{name} API", models={"m": 1}, missing_env=lambda: missing,
                           setup_hint=lambda: ("set " + " and ".join(missing)) if missing else None)


def candidate(provider_name: str, model: str) -> SimpleNamespace:
    return SimpleNamespace(provider=provider_name, model=model, weight=1.0, timeout=None, when=None, rpm=None, tpm=None)


def fake_gateway() -> SimpleNamespace:
    catalog = SimpleNamespace(
        providers={"ready": provider("ready", []), "keyless": provider("keyless", ["KEYLESS_API_KEY"])},
        problems=[], root=Path("/specs"),
    )
    route = SimpleNamespace(strategy="priority", description="", cache=None,
                            candidates=[candidate("ready", "m"), candidate("keyless", "m"), candidate("gone", "m")])
    states = {"ready/m": {"state": "open", "consecutive_failures": 5}, "old/m": {"state": "closed", "consecutive_failures": 0}}
    router = SimpleNamespace(
        table=SimpleNamespace(routes={"fast": route}, default_strategy="priority", breaker_failures=5, breaker_cooldown=30.0),
        breakers=SimpleNamespace(states=lambda: states), latency={"ready/m": 0.25}, in_flight={"ready/m": 2},
    )
    return SimpleNamespace(catalog=catalog, router=router)


def test_health_warns_about_candidates_that_cannot_be_called() -> None:
    data = health_data(fake_gateway())
    assert [p["name"] for p in data["providers"]] == ["keyless", "ready"]
    (route,) = data["routes"]
    assert [c["status"] for c in route["candidates"]] == ["ready", "not configured", "not loaded"]
    assert data["warnings"] == [
        "route fast: candidate keyless/m: not configured (set KEYLESS_API_KEY)",
        "route fast: candidate gone/m: its provider is not loaded",
    ]
    assert data["spec_root"] == "/specs" and data["defaults"]["breaker_cooldown"] == 30.0


def test_health_lists_every_deployment_routed_to_or_seen_by_a_breaker() -> None:
    gateway = fake_gateway()
    rows = {r["name"]: r for r in deployment_rows(gateway.router, {"ready/m": {"fast"}, "gone/m": {"fast"}})}
    assert sorted(rows) == ["gone/m", "old/m", "ready/m"]
    assert rows["ready/m"] == {"name": "ready/m", "aliases": ["fast"], "state": "open", "seen": True, "failures": 5,
                               "in_flight": 2, "latency_ms": 250.0}
    assert rows["old/m"]["aliases"] == [] and rows["old/m"]["seen"]
    assert rows["gone/m"]["state"] == "closed" and not rows["gone/m"]["seen"] and rows["gone/m"]["latency_ms"] is None


def test_the_health_page_refreshes_every_5_seconds_to_an_hour_or_never() -> None:
    assert [refresh_seconds(request(query=f"refresh={v}")) for v in ("5", "3600", "4", "3601", "x", "")] == [
        5, 3600, None, None, None, None]


# -- overview --------------------------------------------------------------------------------------


def test_the_overview_shows_7_days_and_24_hours(store: Store) -> None:
    now = 1_700_000_000.0
    store.write_audit([{"request_id": "a", "ts": now - 60, "user_name": "ann", "deployment": "p/m", "status": 200,
                        "cost": 0.5}, {"request_id": "b", "ts": now - 2 * 86400, "user_name": "ann",
                        "deployment": "p/m", "status": 502}])
    data = overview_data(store.engine, now)
    days, hours = data["sections"]
    assert (days["requests"], days["cost"], hours["requests"], hours["cost"]) == (2, 0.5, 1, 0.5)
    assert [c.title for c in days["charts"]] == ["Cost per user", "Requests per user", "Cost per model",
                                                 "Requests per model"]
    assert data["errors"] == 1


# -- the app ---------------------------------------------------------------------------------------


def test_the_app_serves_its_stylesheet_and_an_error_page_for_unknown_routes(store: Store) -> None:
    with TestClient(dashboard_app(store, SimpleNamespace(), auth_enabled=False)) as ui:
        css = ui.get("/static/dashboard.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        assert css.headers["cache-control"] == "max-age=300"  # the route's own, over the pages' no-store
        assert css.headers["x-frame-options"] == "DENY"
        missing = ui.get("/nope")
        assert missing.status_code == 404 and "No such page." in missing.text
        wrong = ui.delete("/keys")
        assert wrong.status_code == 405 and "Method not allowed." in wrong.text
