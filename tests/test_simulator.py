"""The simulator speaks Schwab's protocol to the real schwab-py client: login, token refresh,
subscriptions, snapshot-then-changes frames; and our source maps its refusals to `AuthError`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from harness import simulator_client

from streaming_service.errors import AuthError
from streaming_service.models import Tick
from streaming_service.simulator import SchwabSimulator, SimulatedMarket
from streaming_service.sources import quiet_library_warnings
from streaming_service.sources.schwab import EQUITY_FIELDS, SchwabStream

with quiet_library_warnings():
    from schwab.streaming import StreamClient


@asynccontextmanager
async def schwab_client(
    sim: SchwabSimulator, tmp_path: Path, *, expires_in_s: int = 86_400
) -> AsyncIterator[Any]:
    client = simulator_client(sim, tmp_path, expires_in_s=expires_in_s)
    try:
        yield client
    finally:
        await client.close_async_session()


async def test_login_subscribe_then_snapshot_followed_by_changed_fields_only(tmp_path: Path) -> None:
    market = SimulatedMarket(["QQQ", "SPY"], seed=3, trades_per_second=5.0)
    items: list[dict[str, Any]] = []
    enough = asyncio.Event()

    def on_frame(message: dict[str, Any]) -> None:
        items.extend(message["content"])
        if len(items) >= 40:
            enough.set()

    async with SchwabSimulator(market, speed=50.0) as sim, schwab_client(sim, tmp_path) as client:
        stream = StreamClient(client)
        stream.add_level_one_equity_handler(on_frame)
        await stream.login()
        await stream.level_one_equity_subs(["QQQ", "SPY"], fields=EQUITY_FIELDS)
        async with asyncio.timeout(20):
            while not enough.is_set():
                await stream.handle_message()
        await stream.logout()

    login = [p for s, c, p in sim.stream_requests if (s, c) == ("ADMIN", "LOGIN")]
    assert len(login) == 1 and login[0]["Authorization"] == "sim-access"
    subs = [p for s, c, p in sim.stream_requests if (s, c) == ("LEVELONE_EQUITIES", "SUBS")]
    assert subs == [{"keys": "QQQ,SPY", "fields": "0,3,8,9,35"}]
    assert ("GET", "/trader/v1/userPreference") in sim.rest_requests

    full = {"key", "delayed", "LAST_PRICE", "TOTAL_VOLUME", "LAST_SIZE", "TRADE_TIME_MILLIS"}
    seen: dict[str, dict[str, Any]] = {}
    partial = 0
    for item in items:
        symbol = item["key"]
        if symbol not in seen:
            # a snapshot: everything known so far (no trade yet means no LAST_SIZE/TRADE_TIME)
            assert {"LAST_PRICE", "TOTAL_VOLUME"} <= set(item), f"first frame for {symbol}: {item}"
            seen[symbol] = {}
        else:
            changed = {k: v for k, v in item.items() if k not in ("key", "delayed")}
            assert changed, "a frame with no changed field must not be sent"
            assert all(seen[symbol].get(k) != v for k, v in changed.items()), f"resent: {item}"
            partial += set(item) != full
        seen[symbol].update({k: v for k, v in item.items() if k not in ("key", "delayed")})
    assert set(seen) == {"QQQ", "SPY"}
    assert partial > 0  # some frames carried only what changed
    assert ("ADMIN", "LOGOUT") in {(s, c) for s, c, _ in sim.stream_requests}


async def test_expired_access_token_is_refreshed_through_the_token_endpoint(tmp_path: Path) -> None:
    market = SimulatedMarket(["QQQ"], seed=4, trades_per_second=5.0)
    ticks: list[Tick] = []
    async with (
        SchwabSimulator(market, speed=50.0) as sim,
        schwab_client(sim, tmp_path, expires_in_s=-60) as client,
    ):
        stream = SchwabStream(client, ("QQQ",), ticks.append)
        task = asyncio.create_task(stream.run())
        await asyncio.wait_for(stream.subscribed.wait(), timeout=20)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert ("POST", "/v1/oauth/token") in sim.rest_requests
    login = [p for s, c, p in sim.stream_requests if (s, c) == ("ADMIN", "LOGIN")]
    assert login[0]["Authorization"].startswith("sim-access-")  # the refreshed token, not the stale one


@pytest.mark.parametrize("fault", ["login denied", "refresh token invalid"])
async def test_refusals_are_fatal_auth_errors_not_reconnect_loops(tmp_path: Path, fault: str) -> None:
    market = SimulatedMarket(["QQQ"], seed=4)
    async with SchwabSimulator(market) as sim:
        if fault == "login denied":
            sim.reject_login = True
            expires_in_s = 86_400
        else:
            sim.refresh_token_valid = False
            expires_in_s = -60
        async with schwab_client(sim, tmp_path, expires_in_s=expires_in_s) as client:
            stream = SchwabStream(
                client, ("QQQ",), lambda tick: None, max_backoff_s=0.01, login_denied_attempts=5
            )
            with pytest.raises(AuthError, match="token"):
                await asyncio.wait_for(stream.run(), timeout=20)
    assert stream.stats.connects == 0
    attempts = [c for s, c, _ in sim.stream_requests if c == "LOGIN"]
    # a denied login is retried (Schwab denies one now and then); five in a row mean an expired login
    assert len(attempts) == (5 if fault == "login denied" else 0)
    assert stream.stats.login_denials == len(attempts)
