"""Build the schwab-py async client from a token file, optionally pointed at another base URL; map
its token errors to `AuthError` in one place (`schwab_errors`, `raise_for_auth_status`).

Production and the simulator share this code path; only `api_base_url` differs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from streaming_service.errors import AuthError
from streaming_service.sources import quiet_library_warnings

with quiet_library_warnings():
    from authlib.common.errors import AuthlibBaseError

__all__ = [
    "AUTH_STATUS",
    "SCHWAB_API_BASE_URL",
    "build_schwab_client",
    "raise_for_auth_status",
    "read_token_file",
    "schwab_errors",
]

SCHWAB_API_BASE_URL = "https://api.schwabapi.com"
AUTH_STATUS = frozenset({401, 403})  # Schwab refuses the access token (after authlib refreshed it)
_RENEW = "Run `streaming-service auth` to log in again (docs/operations.md, 'Schwab token')."


@contextmanager
def schwab_errors(what: str) -> Iterator[None]:
    """Map token errors raised by a schwab-py call inside the block to `AuthError`, once, here.

    These are mapped: authlib errors (e.g. `OAuthError: invalid_client` when the 7-day refresh token
    has expired; the refresh happens inside any REST call) and `httpx.HTTPStatusError` 401/403 (the
    stream's login raises it for userPreference). Everything else passes through unchanged, so
    network errors stay retryable. `what` names the call in the message ("the stream login",
    "the option chain request")."""
    try:
        yield
    except AuthlibBaseError as exc:
        raise AuthError(
            f"Schwab refused the token during {what} ({exc}); the refresh token lasts 7 days. {_RENEW}"
        ) from exc
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code not in AUTH_STATUS:
            raise
        raise AuthError(
            f"Schwab answered {exc.response.status_code} to {what}: check SCHWAB_APP_KEY, "
            f"SCHWAB_APP_SECRET and the token file. {_RENEW}"
        ) from exc


def raise_for_auth_status(response: httpx.Response, what: str) -> None:
    """Raise `AuthError` if Schwab refused the access token for `response` (HTTP 401).

    schwab-py returns REST responses without raising; call this before reading one. A 403 on market
    data is about entitlements, not the token, so it is left to the caller."""
    if response.status_code == 401:
        raise AuthError(
            f"Schwab answered {response.status_code} to {what}: the access token was not accepted. "
            f"Check SCHWAB_APP_KEY/SCHWAB_APP_SECRET. {_RENEW}"
        )


def read_token_file(token_path: Path) -> dict[str, Any]:
    """Return the parsed schwab-py token file; raise `AuthError` saying how to create one if unusable."""
    how_to_fix = (
        "create it with `streaming-service auth` (docs/operations.md, 'Schwab token'), or copy one to "
        "SCHWAB_TOKEN_PATH"
    )
    try:
        data = json.loads(token_path.read_text())
    except FileNotFoundError:
        raise AuthError(f"Schwab token file {token_path} does not exist: {how_to_fix}") from None
    except (OSError, ValueError) as exc:
        raise AuthError(
            f"Schwab token file {token_path} cannot be read ({type(exc).__name__}): {how_to_fix}"
        ) from None
    if not isinstance(data, dict) or "creation_timestamp" not in data or "token" not in data:
        raise AuthError(
            f"Schwab token file {token_path} is not a schwab-py token file "
            f"(needs 'creation_timestamp' and 'token'): {how_to_fix}"
        )
    return data


def build_schwab_client(
    token_path: Path, app_key: str, app_secret: str, *, api_base_url: str = SCHWAB_API_BASE_URL
) -> Any:
    """Return a `schwab.client.AsyncClient` using (and refreshing) the token file at `token_path`.

    schwab-py hard-codes https://api.schwabapi.com; when `api_base_url` differs, every REST request
    (token refresh included) is rewritten to it by an httpx request hook. Raises `AuthError`.
    """
    with quiet_library_warnings():
        import schwab.auth  # heavy import (≈45 MiB): only commands that stream pay for it

    read_token_file(token_path)
    client = schwab.auth.client_from_token_file(
        str(token_path), app_key, app_secret, asyncio=True, enforce_enums=False
    )
    if api_base_url.rstrip("/") != SCHWAB_API_BASE_URL:
        target = httpx.URL(api_base_url)

        async def redirect(request: httpx.Request) -> None:
            request.url = request.url.copy_with(scheme=target.scheme, host=target.host, port=target.port)

        client.session.event_hooks["request"].append(redirect)
    return client
