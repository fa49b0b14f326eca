"""Reading the dashboard's form posts: a small urlencoded body, from this origin, with valid fields."""

from __future__ import annotations

import math
from urllib.parse import parse_qs, urlsplit

from starlette.requests import Request

from ..asgi import BodyDeadlines

__all__ = ["MAX_FORM_BYTES", "FormError", "money_field", "read_form", "same_origin"]

MAX_FORM_BYTES = 16 * 1024


class FormError(Exception):
    """A form the dashboard refuses: the HTTP status and a message for the page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def read_form(request: Request, deadlines: BodyDeadlines | None = None) -> dict[str, str]:
    """A small urlencoded form body (no multipart: the dashboard's forms are plain fields), sent
    within `deadlines` (server.body_timeout)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise FormError(415, "Forms must be sent as application/x-www-form-urlencoded.")
    try:
        body = await (_form_body(request) if deadlines is None else deadlines.run(_form_body(request)))
    except TimeoutError:
        raise FormError(408, "The form was not received in time.") from None
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise FormError(400, "The form could not be read.") from None
    return {name: values[0] for name, values in parsed.items()}


async def _form_body(request: Request) -> bytes:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise FormError(413, "The form is too large.")
    return body


def same_origin(request: Request) -> bool:
    """Origin (else Referer), when the browser sent one, names this host. `null` never does."""
    host = request.headers.get("host", "").lower()
    for header in ("origin", "referer"):
        value = request.headers.get(header)
        if value is None:
            continue
        if value == "null":
            return False
        parts = urlsplit(value)
        return parts.scheme in ("http", "https") and bool(host) and parts.netloc.lower() == host
    return True


def money_field(form: dict[str, str], name: str) -> float | None:
    """A USD amount (a leading `$` allowed); None when blank. FormError when not a non-negative number."""
    raw = form.get(name, "").strip().lstrip("$")
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise FormError(400, f"{name.replace('_', ' ').capitalize()} must be a number of USD.") from None
    if not math.isfinite(value) or value < 0:
        raise FormError(400, f"{name.replace('_', ' ').capitalize()} must be a non-negative number of USD.")
    return value
