"""Spec variables from files (`NAME_FILE`) and rotation without a restart: SIGHUP and
POST /admin/reload read the files again; a request in flight keeps the key it started with."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import httpx
import yaml

from engine.spec.loader import load_catalog
from engine.spec.secretfiles import with_files

from .conftest import provider_env, spec_tree, start_gateway
from .gated import GatedUpstream

HELLO = [{"role": "user", "content": "Hello"}]



def test_a_file_variable_is_read_with_one_trailing_newline_stripped(tmp_path):
    (tmp_path / "crlf").write_bytes(b"secret-one\r\n")
    (tmp_path / "two").write_text("secret-two\n\n")
    environ = with_files({"A_FILE": str(tmp_path / "crlf"), "B_FILE": str(tmp_path / "two"), "C": "plain"})
    assert environ.get("A") == "secret-one"
    assert environ.get("B") == "secret-two\n"  # only one newline is the file's end
    assert environ.get("C") == "plain" and environ.get("D", "") == ""
    assert "A" in environ and "D" not in environ


def test_the_file_wins_over_the_variable_and_an_unreadable_file_reads_as_unset(tmp_path, caplog):
    (tmp_path / "key").write_text("from-file\n")
    environ = with_files({"K": "from-env-secret", "K_FILE": str(tmp_path / "key"),
                          "M": "kept-secret", "M_FILE": str(tmp_path / "missing")})
    with caplog.at_level(logging.WARNING, logger="gaud.specs"):
        assert environ.get("K") == "from-file"
        assert environ.get("M", "") == ""
    text = caplog.text
    assert "both K and K_FILE are set; the file wins" in text
    assert "M_FILE names" in text and "missing" in text
    assert "from-env-secret" not in text and "kept-secret" not in text and "from-file" not in text


def test_provider_keys_and_rebound_deployments_read_files(tmp_path):
    tree = spec_tree(tmp_path)
    routes = yaml.safe_load((tree / "routes.yaml").read_text())
    routes["aliases"]["team-b"] = {"candidates": [
        {"name": "team-b", "provider": "openai", "model": "gpt-4o", "env": {"OPENAI_API_KEY": "TEAM_B_KEY"}},
    ]}
    (tree / "routes.yaml").write_text(yaml.safe_dump(routes, sort_keys=False))
    (tmp_path / "main").write_text("sk-main-from-file\n")
    (tmp_path / "team-b").write_text("sk-team-b-from-file\n")
    environ = {**provider_env("http://127.0.0.1:9"), "OPENAI_API_KEY_FILE": str(tmp_path / "main"),
               "TEAM_B_KEY_FILE": str(tmp_path / "team-b")}
    catalog = load_catalog(tree, environ=environ)
    catalog.raise_for_problems()
    assert catalog.providers["openai"].headers_for("gpt-4o")["Authorization"] == "Bearer sk-main-from-file"
    team_b = catalog.route_table.routes["team-b"].candidates[0].spec
    assert team_b.headers_for("gpt-4o")["Authorization"] == "Bearer sk-team-b-from-file"
    assert team_b.missing_env() == []
    # Without the file's variable the deployment is not configured, and says which variable to set.
    bare = load_catalog(tree, environ={k: v for k, v in environ.items() if k != "TEAM_B_KEY_FILE"})
    assert bare.route_table.routes["team-b"].candidates[0].spec.missing_env() == ["TEAM_B_KEY"]


def _start(gated: GatedUpstream, tmp_path: Path, key_file: Path, **extra: str):  # type: ignore[no-untyped-def]
    env = {k: v for k, v in provider_env(gated.url).items() if k != "OPENAI_API_KEY"}
    env.update({"OPENAI_BASE_URL": f"{gated.url}/v1", "OPENAI_API_KEY_FILE": str(key_file),
                "GAUD_SPECS_DIR": str(spec_tree(tmp_path, retry="false", fallback="false")),
                "GAUD_AUTH_ENABLED": "false", **extra})
    return start_gateway(env, tmp_path / "gw.log")


def _ask(url: str, **fields: object) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json={"model": "gpt-4o", "messages": HELLO, **fields}, timeout=20)


def test_sighup_rotates_the_key_and_a_stream_in_flight_keeps_the_old_one(gated, tmp_path):
    key_file = tmp_path / "openai-key"
    key_file.write_text("sk-old-rotating-0001\n")
    gw = _start(gated, tmp_path, key_file)
    try:
        assert _ask(gw.url).status_code == 200
        assert gated.seen[-1]["Authorization"] == "Bearer sk-old-rotating-0001"

        gated.hold()
        lines: list[str] = []

        def stream() -> None:
            with httpx.stream("POST", f"{gw.url}/v1/chat/completions", timeout=20,
                              json={"model": "gpt-4o", "messages": HELLO, "stream": True}) as r:
                lines.extend(line for line in r.iter_lines() if line.startswith("data: "))

        worker = threading.Thread(target=stream)
        worker.start()
        gated.wait_arrivals(2)  # the first request, then the stream (held after its first chunk)
        key_file.write_text("sk-new-rotating-0002\n")
        gw.process.send_signal(signal.SIGHUP)
        gw.logs_with("reloaded")

        assert _ask(gw.url).status_code == 200  # JSON replies are not held
        assert gated.seen[-1]["Authorization"] == "Bearer sk-new-rotating-0002"
        gated.release()
        worker.join(20)
        assert lines[-1] == "data: [DONE]" and any("last" in line for line in lines)
        assert [h["Authorization"] for h in gated.seen] == [
            "Bearer sk-old-rotating-0001", "Bearer sk-old-rotating-0001", "Bearer sk-new-rotating-0002"]
        assert "sk-old-rotating" not in gw.logs() and "sk-new-rotating" not in gw.logs()
    finally:
        gw.process.terminate()
        gw.process.wait(10)


def test_admin_reload_reads_the_file_again_and_an_emptied_file_unconfigures(gated, tmp_path):
    key_file = tmp_path / "openai-key"
    key_file.write_text("sk-first-0003")
    gw = _start(gated, tmp_path, key_file)
    try:
        key_file.write_text("sk-second-0004\n")
        assert httpx.post(f"{gw.url}/admin/reload").status_code == 200
        assert _ask(gw.url).status_code == 200
        assert gated.seen[-1]["Authorization"] == "Bearer sk-second-0004"
        key_file.unlink()  # a missing file reads as unset: the provider is not configured
        assert httpx.post(f"{gw.url}/admin/reload").status_code == 200
        refused = _ask(gw.url)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "not_configured"
        assert len(gated.seen) == 1
        assert "sk-second" not in gw.logs() and "sk-first" not in gw.logs()
    finally:
        gw.process.terminate()
        gw.process.wait(10)
