"""The admin dashboard at /ui: usage and cost charts, keys and budgets, health and routes.

Server-rendered (Jinja2 templates, inline SVG charts, one stylesheet): no JavaScript, no build
step. Mount it with `Mount("/ui", app=dashboard_app(store, gateway, auth_enabled=...))`.
"""

from .app import SESSION_COOKIE, Sessions, dashboard_app

__all__ = ["SESSION_COOKIE", "Sessions", "dashboard_app"]
