"""HTTP in and out: the ASGI app that turns requests into pipeline calls, the dashboard, serving processes."""
