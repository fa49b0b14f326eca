"""gaud-engine: an OpenAI-compatible LLM gateway whose provider knowledge lives in YAML specs."""

from __future__ import annotations

from .errors import GatewayError, SpecError, SpecLoadError
from .pipeline.translate import build_request, completion_from_reply, error_from_reply
from .spec.catalog import Catalog
from .spec.loader import load_catalog
from .spec.models import Target, resolve_model

__all__ = [
    "Catalog",
    "GatewayError",
    "SpecError",
    "SpecLoadError",
    "Target",
    "build_request",
    "completion_from_reply",
    "error_from_reply",
    "load_catalog",
    "resolve_model",
]
