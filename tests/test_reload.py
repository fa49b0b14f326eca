"""Hot reload (SIGHUP and POST /admin/reload): validated first, refused when broken, in-flight
requests finish on the old config."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import yaml

from .conftest import provider_env, spec_tree, start_gateway

HELLO = [{"role": "user", "content": "Hello"}]


def model_ids(url: str) -> set[str]:
    return {m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]}


def wait_for(predicate, timeout: float = 10.0) -> bool:
    """Poll a condition (the server reloads asynchronously after a signal)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
    return False


def test_reload_by_signal_and_by_admin_route(upstream, tmp_path):
    tree = spec_tree(tmp_path, retry="false")
    env = {**provider_env(upstream.url), "GAUD_SPECS_DIR": str(tree), "GAUD_AUTH_ENABLED": "false"}
    gw = start_gateway(env, tmp_path / "gw.log")
    try:
        assert "tides" not in model_ids(gw.url)
        routes = yaml.safe_load((tree / "routes.yaml").read_text())
        routes["aliases"]["tides"] = {"candidates": [{"provider": "gemini", "model": "gemini-2.5-flash"}]}
        (tree / "routes.yaml").write_text(yaml.safe_dump(routes))

        gw.process.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "tides" in model_ids(gw.url)), "SIGHUP did not reload the routes"
        upstream.reply_fixture("gemini", "generate_text.json")
        reply = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "tides", "messages": HELLO})
        assert reply.status_code == 200 and reply.headers["x-gaud-deployment"] == "gemini/gemini-2.5-flash"

        # A broken file is refused with the validation errors; the old config keeps serving.
        (tree / "providers.d" / "broken.yaml").write_text("api: {base_url: 12}\nbogus: true\n")
        refused = httpx.post(f"{gw.url}/admin/reload")
        assert refused.status_code == 400
        problems = refused.json()["error"]["problems"]
        assert any(p.startswith("providers.d/broken.yaml:2: /bogus") for p in problems), problems
        upstream.reply_fixture("gemini", "generate_text.json")
        assert httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "tides", "messages": HELLO}).status_code == 200

        (tree / "providers.d" / "broken.yaml").unlink()
        del routes["aliases"]["tides"]
        (tree / "routes.yaml").write_text(yaml.safe_dump(routes))
        ok = httpx.post(f"{gw.url}/admin/reload")
        assert ok.status_code == 200 and ok.json()["reloaded"] is True
        assert "tides" not in model_ids(gw.url)
    finally:
        gw.process.terminate()
        gw.process.wait(10)


def test_in_flight_stream_finishes_on_the_old_config(upstream, tmp_path):
    tree = spec_tree(tmp_path, retry="false")
    env = {**provider_env(upstream.url), "GAUD_SPECS_DIR": str(tree), "GAUD_AUTH_ENABLED": "false"}
    gw = start_gateway(env, tmp_path / "gw.log")
    try:
        upstream.reply_fixture("anthropic", "stream_text.sse", frame_delay=0.05)
        chunks: list[str] = []
        first = threading.Event()

        def stream() -> None:
            with httpx.stream("POST", f"{gw.url}/v1/chat/completions",
                              json={"model": "claude-sonnet-4", "messages": HELLO, "stream": True}, timeout=20) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        chunks.append(line)
                        first.set()

        worker = threading.Thread(target=stream)
        worker.start()
        assert first.wait(10)
        routes = yaml.safe_load((tree / "routes.yaml").read_text())
        del routes["aliases"]["claude-sonnet-4"]
        (tree / "routes.yaml").write_text(yaml.safe_dump(routes))
        assert httpx.post(f"{gw.url}/admin/reload").status_code == 200
        worker.join(20)
        assert chunks[-1] == "data: [DONE]"
        assert "claude-sonnet-4" not in model_ids(gw.url)
    finally:
        gw.process.terminate()
        gw.process.wait(10)
