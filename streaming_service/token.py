"""The Schwab token file's life: how long its refresh token lasts, noticing a new one, creating one.

schwab-py's token file is `{"creation_timestamp": <epoch s>, "token": {...}}`. The refresh token
lasts 7 days from `creation_timestamp`, which an access-token refresh does not change; after that
only a new login (`login`, the manual flow: works over SSH) gives a working file again.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from streaming_service.errors import AuthError
from streaming_service.sources import quiet_library_warnings
from streaming_service.sources.schwab_client import SCHWAB_API_BASE_URL, read_token_file

__all__ = [
    "EXPIRING_SOON_S",
    "REFRESH_TOKEN_LIFE_S",
    "TokenInfo",
    "TokenWatcher",
    "describe",
    "format_duration",
    "login",
    "read_token_info",
]

REFRESH_TOKEN_LIFE_S = 7 * 86_400
EXPIRING_SOON_S = 86_400
_AUTH_FIX = "run `streaming-service auth` (docs/operations.md, 'Schwab token')"


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """When a token file's refresh token was created and when it stops working (epoch seconds)."""

    path: Path
    created_at: float
    refresh_expires_at: float

    def seconds_left(self, now: float) -> float:
        """Seconds until the refresh token expires (negative once it has)."""
        return self.refresh_expires_at - now

    def expired(self, now: float) -> bool:
        """True once the refresh token's 7 days are over."""
        return self.seconds_left(now) <= 0

    def expiring_soon(self, now: float) -> bool:
        """True when it still works but expires within `EXPIRING_SOON_S` (24 h); False once expired."""
        return 0 < self.seconds_left(now) < EXPIRING_SOON_S


def read_token_info(path: Path) -> TokenInfo:
    """Read the token file's creation time. Raises `AuthError` (with the fix) if missing or unreadable."""
    created = read_token_file(path)["creation_timestamp"]
    if isinstance(created, bool) or not isinstance(created, int | float):
        raise AuthError(
            f"Schwab token file {path} has no numeric 'creation_timestamp' "
            f"(schwab-py writes epoch seconds): {_AUTH_FIX}"
        )
    return TokenInfo(path, float(created), float(created) + REFRESH_TOKEN_LIFE_S)


class TokenWatcher:
    """Tells whether the token file was written, created or removed since the last look.

    Compares (inode, size, mtime_ns); the first `changed()` compares with the file as it was when
    the watcher was made. A rewrite that keeps inode and size within one filesystem timestamp tick
    (a few ms) goes unnoticed; `login` replaces the file (new inode), so a new login never does.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen = self._signature()

    def changed(self) -> bool:
        """True if the file differs from the last look (then that becomes the last look). One stat()."""
        now = self._signature()
        if now == self._seen:
            return False
        self._seen = now
        return True

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)


def login(
    app_key: str,
    app_secret: str,
    redirect_uri: str,
    token_path: Path,
    *,
    input_func: Callable[[str], str] = input,
    print_func: Callable[[str], None] = print,
    api_base_url: str = SCHWAB_API_BASE_URL,
) -> TokenInfo:
    """schwab-py's manual login flow: print the authorisation URL, read back the redirected URL,
    exchange its code for a token and write a new token file at `token_path` (mode 0o600, parent
    directory created, replaced atomically). `api_base_url` redirects the code exchange (simulator).

    Returns the new file's `TokenInfo`. Raises `AuthError` when the pasted address carries no code
    or an error, the state does not match, or Schwab refuses or cannot be reached; the old token
    file is then left as it was. No secret or code appears in messages.
    """
    with quiet_library_warnings():
        import schwab.auth  # heavy import (≈45 MiB): only `auth` pays for it
        from authlib.common.errors import AuthlibBaseError

    context = schwab.auth.get_auth_context(app_key, redirect_uri)
    print_func(
        "1. Open this address in a browser (any machine) and log in to Schwab:\n\n"
        f"    {context.authorization_url}\n\n"
        f"2. Schwab then sends the browser to {redirect_uri}?code=…; the page itself may fail to load.\n"
        "   Copy the whole address from the browser's address bar and paste it here."
    )
    received = input_func("Redirected address> ").strip()
    _check_received(received, redirect_uri)
    token_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _token_endpoint(schwab.auth, api_base_url):
            client = schwab.auth.client_from_received_url(
                app_key,
                app_secret,
                context,
                received,
                lambda token, *args, **kwargs: _write_private(token_path, token),
                asyncio=False,
                enforce_enums=False,
            )
        client.session.close()
    except OSError as exc:
        raise AuthError(f"cannot write the token file {token_path}: {exc.strerror or exc}") from None
    except (AuthlibBaseError, httpx.HTTPError, ValueError) as exc:
        raise AuthError(f"the login failed ({_oauth_reason(exc)}): {_AUTH_FIX} again") from None
    finally:
        _collect_exchange_client()
    print_func(f"Token saved to {token_path}.")
    return read_token_info(token_path)


def describe(info: TokenInfo, now: float) -> str:
    """One line for a person, e.g. 'refresh token expires 2026-12-03 14:00 UTC (in 4 d 3 h)'."""
    left = info.seconds_left(now)
    if left <= 0:
        return f"refresh token expired {format_duration(-left)} ago: run `streaming-service auth`"
    when = datetime.fromtimestamp(info.refresh_expires_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
    soon = ": renew it soon with `streaming-service auth`" if info.expiring_soon(now) else ""
    return f"refresh token expires {when} (in {format_duration(left)}){soon}"


def format_duration(seconds: float) -> str:
    """'45 s', '12 min', '3 h 5 min', '4 d 3 h' (two units at most, rounded down; negatives as 0)."""
    s = max(0, int(seconds))
    days, hours, minutes = s // 86_400, s % 86_400 // 3600, s % 3600 // 60
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min" if minutes else f"{s} s"


def _check_received(received: str, redirect_uri: str) -> None:
    """Refuse a pasted address without a code (or with Schwab's error) before calling Schwab."""
    query = parse_qs(urlsplit(received).query)
    if "error" in query:
        reason = query.get("error_description", query["error"])[0]
        raise AuthError(f"Schwab refused the authorisation ({reason}): {_AUTH_FIX} again")
    if not query.get("code"):
        raise AuthError(
            f"the pasted address has no 'code=' parameter: paste the whole address the browser shows "
            f"after the login (it starts with {redirect_uri})"
        )


@contextlib.contextmanager
def _token_endpoint(auth_module: Any, api_base_url: str) -> Iterator[None]:
    """Point schwab-py's token endpoint at `api_base_url` for the duration (production: unchanged).

    schwab-py hard-codes it in `schwab.auth.TOKEN_ENDPOINT`, read when the code is exchanged; the
    client it builds for that exchange is internal, so a request hook cannot reach it.
    """
    original = auth_module.TOKEN_ENDPOINT
    if api_base_url.rstrip("/") != SCHWAB_API_BASE_URL:
        auth_module.TOKEN_ENDPOINT = api_base_url.rstrip("/") + "/v1/oauth/token"
    try:
        yield
    finally:
        auth_module.TOKEN_ENDPOINT = original


def _write_private(path: Path, token: dict[str, Any]) -> None:
    """Write the token JSON to a new 0o600 file next to `path`, then rename it over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp: mode 0o600
    try:
        with os.fdopen(fd, "w") as file:
            json.dump(token, file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _collect_exchange_client() -> None:
    """schwab-py's `client_from_received_url` never closes the HTTP client it exchanges the code
    with; collect it now, without the ResourceWarning its open socket would raise later."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def _oauth_reason(exc: Exception) -> str:
    """A short reason from authlib/httpx errors, without the request (it may hold the code)."""
    error = getattr(exc, "error", None)
    if error:
        description = getattr(exc, "description", None)
        return f"{error}: {description}" if description else str(error)
    return type(exc).__name__
