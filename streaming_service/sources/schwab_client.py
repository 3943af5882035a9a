"""Build the schwab-py async client from a token file, optionally pointed at another base URL.

Production and the simulator share this code path; only `api_base_url` differs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from streaming_service.errors import AuthError
from streaming_service.sources import quiet_library_warnings

__all__ = ["SCHWAB_API_BASE_URL", "build_schwab_client", "read_token_file"]

SCHWAB_API_BASE_URL = "https://api.schwabapi.com"


def read_token_file(token_path: Path) -> dict[str, Any]:
    """Return the parsed schwab-py token file; raise `AuthError` saying how to create one if unusable."""
    how_to_fix = (
        "create it with schwab-py's login flow on a machine with a browser "
        "(see README, 'Schwab token'), then copy it to SCHWAB_TOKEN_PATH"
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
            request.url = request.url.copy_with(
                scheme=target.scheme, host=target.host, port=target.port
            )

        client.session.event_hooks["request"].append(redirect)
    return client
