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
