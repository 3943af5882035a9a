"""Token lifecycle: refresh-token expiry from the file, noticing a new file, and the manual login
flow run with schwab-py against the simulator's token endpoint."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from streaming_service.errors import AuthError
from streaming_service.simulator import SchwabSimulator, SimulatedMarket, write_token_file
from streaming_service.sources import quiet_library_warnings
from streaming_service.sources.schwab_client import build_schwab_client
from streaming_service.token import (
    REFRESH_TOKEN_LIFE_S,
    TokenInfo,
    TokenWatcher,
    describe,
    format_duration,
    login,
    read_token_info,
)

REDIRECT = "https://127.0.0.1:8182"
CREATED = datetime(2026, 11, 26, 14, 0, tzinfo=UTC).timestamp()


def token_file(path: Path, created: float | str = CREATED) -> Path:
    path.write_text(json.dumps({"creation_timestamp": created, "token": {"refresh_token": "r"}}))
    return path


# --- expiry -------------------------------------------------------------------------------------


def test_refresh_token_lasts_seven_days_from_creation(tmp_path: Path) -> None:
    info = read_token_info(token_file(tmp_path / "t.json"))
    assert info == TokenInfo(tmp_path / "t.json", CREATED, CREATED + 7 * 86_400)
    day = 86_400
    assert info.seconds_left(CREATED + day) == 6 * day
    assert not info.expiring_soon(CREATED + 5 * day) and not info.expired(CREATED + 5 * day)
    assert info.expiring_soon(CREATED + 6 * day + 1) and not info.expired(CREATED + 6 * day + 1)
    assert info.expired(CREATED + REFRESH_TOKEN_LIFE_S) and not info.expiring_soon(CREATED + 7 * day)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("{not json", "cannot be read"),
        ('{"token": {}}', "needs 'creation_timestamp'"),
        ('{"creation_timestamp": "yesterday", "token": {}}', "no numeric 'creation_timestamp'"),
        ('{"creation_timestamp": true, "token": {}}', "no numeric 'creation_timestamp'"),
    ],
)
def test_unusable_token_file_is_an_auth_error_with_the_fix(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "t.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(AuthError, match=message) as raised:
        read_token_info(path)
    assert str(path) in str(raised.value)


def test_describe_for_a_person() -> None:
    info = TokenInfo(Path("t.json"), CREATED, CREATED + REFRESH_TOKEN_LIFE_S)
    three_days_ago = info.refresh_expires_at - (4 * 86_400 + 3 * 3600 + 59)
    assert describe(info, three_days_ago) == "refresh token expires 2026-12-03 14:00 UTC (in 4 d 3 h)"
    assert describe(info, info.refresh_expires_at - 5400) == (
        "refresh token expires 2026-12-03 14:00 UTC (in 1 h 30 min): "
        "renew it soon with `streaming-service auth`"
    )
    assert describe(info, info.refresh_expires_at + 2 * 3600 + 10) == (
        "refresh token expired 2 h 0 min ago: run `streaming-service auth`"
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(-5, "0 s"), (0.9, "0 s"), (45, "45 s"), (60, "1 min"), (3599, "59 min"), (3 * 3600 + 300, "3 h 5 min"),
     (86_400 * 4 + 3 * 3600 + 1, "4 d 3 h")],
)  # fmt: skip
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# --- watching for a new file --------------------------------------------------------------------


def test_watcher_notices_creation_replacement_and_removal(tmp_path: Path) -> None:
    path = tmp_path / "token.json"
    watcher = TokenWatcher(path)
    assert not watcher.changed()  # still missing
    token_file(path)
    assert watcher.changed() and not watcher.changed()
    replacement = token_file(tmp_path / "new.json", CREATED + 1)
    os.replace(replacement, path)  # what `login` does
    assert watcher.changed() and not watcher.changed()
    with path.open("a") as file:  # an in-place rewrite that changes the size
        file.write(" ")
    assert watcher.changed()
    path.unlink()
    assert watcher.changed() and not watcher.changed()


# --- login against the simulator ----------------------------------------------------------------


@pytest.fixture
async def sim() -> AsyncIterator[SchwabSimulator]:
    async with SchwabSimulator(SimulatedMarket(["QQQ"])) as simulator:
        yield simulator


class Browser:
    """Stands in for the person: reads the printed URL and 'pastes' what Schwab would redirect to."""

    def __init__(self, answer: Callable[[dict[str, list[str]]], str]) -> None:
        self.printed: list[str] = []
        self.prompts: list[str] = []
        self._answer = answer

    def print(self, text: str) -> None:
        self.printed.append(text)

    def input(self, prompt: str) -> str:
        self.prompts.append(prompt)
        url = next(w for line in self.printed for w in line.split() if w.startswith("https://api."))
        return self._answer(parse_qs(urlsplit(url).query))


def approve(query: dict[str, list[str]]) -> str:
    return f"{query['redirect_uri'][0]}/?code=C0DE.abc%40&session=x&state={query['state'][0]}\n"


async def run_login(
    sim: SchwabSimulator, path: Path, browser: Browser, *, base_url: str | None = None
) -> TokenInfo:
    return await asyncio.to_thread(
        login,
        "app-key",
        "app-secret",
        REDIRECT,
        path,
        input_func=browser.input,
        print_func=browser.print,
        api_base_url=base_url or sim.api_base_url,
    )


async def test_login_writes_a_private_token_file_schwab_py_can_use(
    sim: SchwabSimulator, tmp_path: Path
) -> None:
    path = tmp_path / "data" / "nested" / "schwab_token.json"
    browser = Browser(approve)
    before = time.time()
    info = await run_login(sim, path, browser)

    url = urlsplit(next(w for w in browser.printed[0].split() if w.startswith("https://")))
    assert (url.netloc, url.path) == ("api.schwabapi.com", "/v1/oauth/authorize")
    assert parse_qs(url.query)["client_id"] == ["app-key"] and parse_qs(url.query)["redirect_uri"] == [
        REDIRECT
    ]
    assert sim.rest_requests == [("POST", "/v1/oauth/token")]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    saved = json.loads(path.read_text())
    assert saved["token"]["access_token"].startswith("sim-access-")
    assert saved["token"]["refresh_token"] == "sim-refresh"
    assert before - 1 <= info.created_at <= time.time() and info.created_at == saved["creation_timestamp"]
    assert not info.expiring_soon(time.time()) and info.seconds_left(time.time()) > 7 * 86_400 - 60
    assert [p for p in path.parent.iterdir()] == [path]  # no temporary file left behind
    with quiet_library_warnings():
        import schwab.auth
    assert schwab.auth.TOKEN_ENDPOINT == "https://api.schwabapi.com/v1/oauth/token"  # restored

    client = build_schwab_client(path, "app-key", "app-secret", api_base_url=sim.api_base_url)
    try:
        response = await client.get_user_preferences()
    finally:
        await client.close_async_session()
    assert response.status_code == 200 and response.json()["streamerInfo"]


async def test_login_replaces_an_old_world_readable_file(sim: SchwabSimulator, tmp_path: Path) -> None:
    path = tmp_path / "token.json"
    write_token_file(path)
    path.chmod(0o644)
    watcher = TokenWatcher(path)
    await run_login(sim, path, Browser(approve))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["token"]["access_token"] != "sim-access"
    assert watcher.changed()


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (lambda q: f"{REDIRECT}/?state={q['state'][0]}", "has no 'code=' parameter"),
        (lambda q: f"{REDIRECT}/?error=access_denied&error_description=user+said+no", "user said no"),
        (lambda q: f"{REDIRECT}/?code=C0DE&state=forged", "mismatching_state"),
        (lambda q: "C0DE", "has no 'code=' parameter"),
    ],
    ids=["no code", "denied", "forged state", "code only"],
)
async def test_bad_pasted_address_is_refused_before_schwab_is_asked(
    sim: SchwabSimulator, tmp_path: Path, answer: Callable[[dict[str, list[str]]], str], message: str
) -> None:
    path = write_token_file_at(tmp_path)
    before = path.read_bytes()
    with pytest.raises(AuthError, match=message):
        await run_login(sim, path, Browser(answer))
    assert sim.rest_requests == [] and path.read_bytes() == before


async def test_refused_exchange_leaves_the_old_file(sim: SchwabSimulator, tmp_path: Path) -> None:
    path = write_token_file_at(tmp_path)
    before = path.read_bytes()
    sim.refresh_token_valid = False  # the simulator's token endpoint then answers 400 invalid_client
    with pytest.raises(AuthError, match="invalid_client") as raised:
        await run_login(sim, path, Browser(approve))
    assert "C0DE" not in str(raised.value) and "app-secret" not in str(raised.value)
    assert sim.rest_requests == [("POST", "/v1/oauth/token")] and path.read_bytes() == before


async def test_unreachable_token_endpoint_is_an_auth_error(sim: SchwabSimulator, tmp_path: Path) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        closed_port = free.getsockname()[1]
    with pytest.raises(AuthError, match="ConnectError"):
        await run_login(
            sim, tmp_path / "t.json", Browser(approve), base_url=f"http://127.0.0.1:{closed_port}"
        )
    assert not (tmp_path / "t.json").exists()


def write_token_file_at(tmp_path: Path) -> Path:
    path = tmp_path / "token.json"
    write_token_file(path)
    return path
