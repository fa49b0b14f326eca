"""The admin dashboard starts the same upstream sign-in flows as `gaud-engine login`."""

from __future__ import annotations

import re
import time

import httpx

from .conftest import start_gateway
from .test_credentials import clock, server, tree  # noqa: F401 - fixtures

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def test_device_sign_in_from_the_dashboard(server, tree, tmp_path):  # noqa: F811
    server.device_interval = 0.01
    server.device_script = ["authorization_pending"]
    env = {"GAUD_SPECS_DIR": str(tree), "GAUD_AUTH_ENABLED": "false"}
    gw = start_gateway(env, tmp_path / "gw.log")
    try:
        with httpx.Client(base_url=gw.url, headers={"origin": gw.url}) as ui:
            page = ui.get("/ui/signin")
            assert page.status_code == 200 and 'id="signin-acme-device"' in page.text
            assert "not signed in" in page.text
            csrf = CSRF.search(page.text)[1]
            assert ui.post("/ui/signin/acme-device", data={"csrf": "wrong"}).status_code == 403
            started = ui.post("/ui/signin/acme-device", data={"csrf": csrf})
            assert started.status_code in (200, 303)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # the flow polls the fake server in the background
                page = ui.get("/ui/signin")
                row = page.text.split('id="signin-acme-device"')[1].split("</tr>")[0]
                if "signed in" in row and "not signed in" not in row and "signing in" not in row:
                    break
            assert "WDJB-MJHT" in row  # the code the user enters, shown on the page
            assert "Sign out" in row
            assert server.count("/exchange") == 1
            ui.post("/ui/signout/acme-device", data={"csrf": csrf})
            row = ui.get("/ui/signin").text.split('id="signin-acme-device"')[1].split("</tr>")[0]
            assert "not signed in" in row
        for secret in server.secrets:
            assert secret not in gw.logs()
    finally:
        gw.process.terminate()
        gw.process.wait(10)


def test_a_signed_in_provider_counts_as_ready(server, tree, tmp_path):  # noqa: F811
    """Without its environment key, a provider is offered once someone signed in to it."""
    from click.testing import CliRunner

    from engine.cli.commands import main

    server.device_interval = 0.01
    spec_file = tree / "providers.d" / "acme-device.yaml"
    spec_file.write_text(spec_file.read_text().replace("ACME_API_KEY: {secret: true,", "ACME_API_KEY: {secret: true, required: true,"))
    db = f"sqlite:///{tmp_path / 'gaud.db'}"
    env = {"GAUD_SPECS_DIR": str(tree), "GAUD_AUTH_ENABLED": "false", "GAUD_DATABASE_URL": db}
    gw = start_gateway(env, tmp_path / "gw.log")
    try:
        assert not any(m["id"].startswith("acme-device/") for m in httpx.get(f"{gw.url}/v1/models").json()["data"])
        login = CliRunner().invoke(main, ["login", "acme-device", "--no-browser"],
                                   env={"GAUD_SPECS_DIR": str(tree), "GAUD_DATABASE_URL": db})
        assert login.exit_code == 0, login.output
        deadline = time.monotonic() + 40  # the gateway re-reads stored sign-ins every 30 s at most
        while time.monotonic() < deadline:
            ids = {m["id"] for m in httpx.get(f"{gw.url}/v1/models").json()["data"]}
            if "acme-device/m1" in ids:
                break
        assert "acme-device/m1" in ids
        assert httpx.get(f"{gw.url}/health?detail=1").json()["providers"]["acme-device"]["ready"] is True
    finally:
        gw.process.terminate()
        gw.process.wait(10)
