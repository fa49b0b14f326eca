"""The admin dashboard at /ui: usage and cost charts, the request log, keys and budgets, health and routes.

Server-rendered (Jinja2 templates, inline SVG charts, one stylesheet): no JavaScript, no build
step. Mount it with `Mount("/ui", app=dashboard_app(store, gateway, auth_enabled=...))`.
app.py wires the routes to the pages (overview, keys, health, signin, login), which share a
`Dashboard` (context.py); sessions.py keeps who logged in, forms.py reads form posts.
"""

from .app import dashboard_app
from .sessions import SESSION_COOKIE, Sessions

__all__ = ["SESSION_COOKIE", "Sessions", "dashboard_app"]
