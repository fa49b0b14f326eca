"""The gateway's description of itself: /openapi.json, the /docs page that renders it, and the landing page."""
