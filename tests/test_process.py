"""Process-wide settings of a serving process."""

from __future__ import annotations

import platform

import pytest

from engine.web.process import limit_malloc_arenas


def test_an_arena_cap_from_the_environment_is_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt(M_ARENA_MAX) is glibc's")
def test_malloc_arenas_are_capped_on_glibc(monkeypatch):
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert limit_malloc_arenas() is True


def test_started_app_collects_the_young_generation_less_often(catalog, tmp_path):
    """After start-up the young-generation threshold is raised (GC_GEN0_THRESHOLD): at the
    default 700, requests in flight alone kept triggering collections of live objects."""
    import gc

    from starlette.testclient import TestClient

    from engine.config import load_settings
    from engine.web.server import GC_GEN0_THRESHOLD, create_app

    before = gc.get_threshold()
    settings = load_settings(environ={"GAUD_AUTH_ENABLED": "false", "GAUD_DATABASE_URL": f"sqlite:///{tmp_path / 'g.db'}"})
    try:
        gc.set_threshold(700, *before[1:])
        with TestClient(create_app(catalog, settings)) as client:
            assert client.get("/health").status_code == 200
            assert gc.get_threshold() == (GC_GEN0_THRESHOLD, *before[1:])
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
