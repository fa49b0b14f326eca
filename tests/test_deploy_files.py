"""Dockerfile, compose.yaml and deploy/nginx.conf, read as data (Docker cannot run here).

Checks what would only show at `docker compose up`: the image runs as a non-root user with a health
check on /health and listens on every interface; every GAUD_* variable set is one the gateway reads,
with a value its settings parser accepts; every service has a health check; the proxy shares
requests between every gateway; the README's Deployment section documents each variable.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from engine.config import DEFAULTS, load_settings

ROOT = Path(__file__).resolve().parent.parent
PROVIDER_SPECS = ROOT / "providers.d"


def dockerfile() -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (INSTRUCTION, arguments), continuations joined."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), args.strip()))
    return stages


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, args in stage:
        if instruction == "ENV":
            env.update(dict(pair.split("=", 1) for pair in args.split()))
    return env


def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def interpolated(value: str) -> str:
    """A compose value with `${VAR:?msg}` and `${VAR:-default}` filled in, as `docker compose` would."""
    return re.sub(r"\$\{(\w+)(?::[?-]([^}]*))?\}", lambda m: f"test-{m.group(1).lower()}", str(value))


def gateways(services: dict) -> dict[str, dict]:
    return {name: service for name, service in services.items() if "build" in service}


def read_variables() -> set[str]:
    """Every GAUD_* variable the gateway reads: one per setting, and those engine/ names itself."""
    settings = {f"GAUD_{section}_{key}".upper() for section, values in DEFAULTS.items() for key in values}
    named = set()
    for path in (ROOT / "engine").rglob("*.py"):
        named |= set(re.findall(r"\bGAUD_[A-Z_]+[A-Z]\b", path.read_text()))
    return settings | named


def provider_variables() -> set[str]:
    names = set()
    for path in PROVIDER_SPECS.glob("*.yaml"):
        spec = yaml.safe_load(path.read_text()) or {}
        names |= set((spec.get("api") or {}).get("env") or {})
    return names


def deployment_section() -> str:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"^## Deployment\n(.*?)^## ", readme, re.DOTALL | re.MULTILINE)
    assert match, "README.md has no Deployment section"
    return match.group(1)


# -- Dockerfile -----------------------------------------------------------------------------------


def test_the_image_is_a_slim_multi_stage_build():
    stages = dockerfile()
    assert len(stages) >= 2
    for stage in stages:
        assert re.fullmatch(r"python:3\.1[1-9]-slim( AS \w+)?", stage[0][1]), stage[0]
    final = stages[-1]
    # The result installs wheels from the first stage only: no compiler, no index.
    assert any(i == "COPY" and args.startswith("--from=") for i, args in final)
    install = next(args for i, args in final if i == "RUN" and "pip install" in args)
    assert "--no-index" in install and "--no-cache-dir" in install
    # What the wheel bundles (pyproject's force-include) is in the build context of the first stage.
    bundled = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    copied = " ".join(args for i, args in stages[0] if i == "COPY")
    for source in [*bundled, "engine", "pyproject.toml", "README.md"]:
        assert re.search(rf"(^|\s){re.escape(source)}(\s|$)", copied), source
        assert (ROOT / source).exists()
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not set(bundled) & set(ignored) and "engine" not in ignored and "README.md" not in ignored


def test_the_image_runs_as_a_user_and_checks_its_health():
    final = dockerfile()[-1]
    users = [args for i, args in final if i == "USER"]
    assert users and users[-1] not in ("root", "0") and not users[-1].startswith("0:")
    creates_user = next(args for i, args in final if i == "RUN" and "useradd" in args)
    assert users[-1] in creates_user.split()
    # USER comes before what the container runs.
    order = [i for i, _ in final]
    assert order.index("USER") < order.index("ENTRYPOINT")
    health = next(args for i, args in final if i == "HEALTHCHECK")
    command = json.loads(health[health.index("CMD") + 3:].strip())
    assert "/health" in " ".join(command) and "GAUD_SERVER_PORT" in " ".join(command)
    assert json.loads(next(args for i, args in final if i == "ENTRYPOINT")) == ["gaud-engine"]
    assert json.loads(next(args for i, args in final if i == "CMD")) == ["serve"]


def test_the_image_settings_are_real_and_listen_on_every_interface():
    final = dockerfile()[-1]
    env = env_of(final)
    gaud = {name for name in env if name.startswith("GAUD_")}
    assert gaud and gaud <= read_variables(), gaud - read_variables()
    settings = load_settings(environ={name: env[name] for name in gaud})
    assert settings.get("server.host") == "0.0.0.0"
    exposed = next(args for i, args in final if i == "EXPOSE")
    assert exposed == str(settings.get("server.port"))
    # The SQLite file lives in the declared volume, which is the non-root user's home.
    volume = next(args for i, args in final if i == "VOLUME")
    assert str(settings.get("database.url")).startswith(f"sqlite:///{volume}/")
    assert f"--home-dir {volume}" in next(args for i, args in final if i == "RUN" and "useradd" in args)


# -- compose.yaml ---------------------------------------------------------------------------------


def test_compose_has_postgres_redis_two_gateways_and_a_proxy_all_with_health_checks():
    services = compose()["services"]
    assert len(gateways(services)) >= 2
    assert {"postgres", "redis", "proxy"} <= set(services)
    image_checks = any(i == "HEALTHCHECK" for i, _ in dockerfile()[-1])
    for name, service in services.items():
        check = service.get("healthcheck", {})
        assert not check.get("disable") and check.get("test") != ["NONE"], name
        # A gateway built from the Dockerfile inherits its HEALTHCHECK.
        assert check.get("test") or ("build" in service and image_checks), f"{name} has no health check"
    for name, service in gateways(services).items():
        needs = service["depends_on"]
        assert needs["postgres"]["condition"] == needs["redis"]["condition"] == "service_healthy", name
    assert all(condition == {"condition": "service_healthy"}
               for condition in services["proxy"]["depends_on"].values())
    assert set(services["proxy"]["depends_on"]) == set(gateways(services))
    # One gateway at a time on a fresh database: the others wait for a healthy first one.
    waiting = [name for name, service in gateways(services).items()
               if any(other in service["depends_on"] for other in gateways(services))]
    assert len(waiting) == len(gateways(services)) - 1


def test_compose_settings_are_read_by_the_gateway_and_parse():
    services = compose()["services"]
    known = read_variables() | provider_variables()
    secrets = set()
    for name, service in gateways(services).items():
        environment = {key: interpolated(value) for key, value in service["environment"].items()}
        unknown = set(environment) - known
        assert not unknown, f"{name} sets variables nothing reads: {unknown}"
        settings = load_settings(environ=environment)  # every value parses (a bare `*` would not)
        assert settings.get("server.host") == "0.0.0.0"
        assert str(settings.get("database.url")).startswith("postgresql://")
        assert "@postgres:" in settings.get("database.url")
        assert str(settings.get("redis.url")).startswith("redis://redis:")
        assert settings.get("server.proxy_headers") is True
        secrets.add(service["environment"]["GAUD_SECRET_KEY"])
        # A required secret: compose refuses to start without it rather than starting with none.
        assert re.fullmatch(r"\$\{GAUD_SECRET_KEY:\?[^}]+\}", service["environment"]["GAUD_SECRET_KEY"])
    assert len(secrets) == 1  # every instance shares the key secret
    password = services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert any(password.split(":")[0] in str(s["environment"]["GAUD_DATABASE_URL"]) for s in gateways(services).values())


def test_the_proxy_shares_requests_between_every_gateway():
    services = compose()["services"]
    proxy = services["proxy"]
    mount = next(v for v in proxy["volumes"] if v.endswith("/etc/nginx/conf.d/default.conf:ro"))
    conf = (ROOT / mount.split(":")[0]).read_text()
    servers = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", conf, re.MULTILINE)
    for name, service in gateways(services).items():
        port = service["environment"]["GAUD_SERVER_PORT"]
        assert (name, str(port)) in servers, name
    assert len(servers) == len(gateways(services))
    assert re.search(r"proxy_buffering\s+off;", conf)  # streams reach clients as they are produced
    read_timeout = int(re.search(r"proxy_read_timeout\s+(\d+)s;", conf).group(1))
    assert read_timeout >= DEFAULTS["upstream"]["total_timeout"]
    body = re.search(r"client_max_body_size\s+(\d+)m;", conf).group(1)
    assert int(body) * 1024 * 1024 >= DEFAULTS["limits"]["max_body_bytes"]


@pytest.mark.parametrize("source", ["compose", "dockerfile"])
def test_the_readme_documents_every_variable_set(source):
    section = deployment_section()
    if source == "compose":
        names = {name for s in gateways(compose()["services"]).values() for name in s["environment"]}
    else:
        names = set(env_of(dockerfile()[-1])) - {"PYTHONUNBUFFERED"}
    missing = {name for name in names if f"`{name}`" not in section}
    assert not missing, f"README.md Deployment does not mention {missing}"
    assert "compose.yaml" in section and "Dockerfile" in section
