"""A plain HTTP client for the gateway's tests (http.client: nothing in between)."""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import urlsplit


def request(
    url: str,
    body: dict[str, Any] | bytes | None = None,
    *,
    method: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request; the body read to its end."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(
            method or ("POST" if data is not None else "GET"),
            target,
            body=data,
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()
