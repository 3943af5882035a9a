"""The stream rides out faults of the connection and of Schwab's side. It reconnects, subscribes
equities and options again, and data resumes, after a socket closed again and again, logins
refused a few times, a socket gone silent, heartbeats without data, and Schwab's code 12. An
expired refresh token is an `AuthError` from the stream and from the option chain requests alike.
Bugs in our own handlers are internal errors, not bad frames. Real schwab-py client against the
simulator."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from harness import Received, alive, simulator_client, streaming
from polling import wait_until
from structlog.testing import capture_logs

from streaming_service.errors import AuthError
from streaming_service.models import Tick
from streaming_service.simulator import SchwabSimulator, SimulatedMarket
from streaming_service.simulator.options import occ_symbol
from streaming_service.sources.options import BadOptionItem, OptionsTracker
from streaming_service.sources.schwab import SchwabStream

EQUITIES, OPTIONS = "LEVELONE_EQUITIES", "LEVELONE_OPTIONS"


@asynccontextmanager
async def running_stream(
    sim: SchwabSimulator, tmp_path: Path, **options: Any
) -> AsyncIterator[tuple[SchwabStream, Received, asyncio.Task[None]]]:
    """`harness.streaming`, subscribed, with two QQQ options added."""
    async with streaming(sim, tmp_path, **options) as (stream, got, task):
        await wait_until(lambda: alive(task) and stream.subscribed.is_set())
        await stream.set_option_symbols(contracts(sim))
        yield stream, got, task


def contracts(sim: SchwabSimulator) -> set[str]:
    book = sim.books["QQQ"]
    return {occ_symbol("QQQ", book.expirations[1], kind, 500.0) for kind in "CP"}


def sessions(sim: SchwabSimulator) -> list[list[tuple[str, str]]]:
    """The requests of each connection, split at each LOGIN."""
    split: list[list[tuple[str, str]]] = []
    for service, command, _ in sim.stream_requests:
        if command == "LOGIN":
            split.append([])
        split[-1].append((service, command))
    return split


async def data_resumes(got: Received, task: asyncio.Task[None], *, ticks: int = 5, options: int = 1) -> None:
    before_ticks, before_options = len(got.ticks), len(got.options)
    await wait_until(
        lambda: (
            alive(task)
            and len(got.ticks) >= before_ticks + ticks
            and len(got.options) >= before_options + options
        )
    )


def resubscribed(sim: SchwabSimulator, since: int) -> bool:
    """Every connection after the first `since` subscribed equities and then options."""
    full = [("ADMIN", "LOGIN"), (EQUITIES, "SUBS"), (OPTIONS, "SUBS")]
    return all(session[:3] == full for session in sessions(sim)[since:] if len(session) > 1)


async def test_a_socket_closed_again_and_again_loses_no_share(tmp_path: Path) -> None:
    market = SimulatedMarket(["QQQ"], seed=41, trades_per_second=10.0, session_seconds=400.0)
    async with (
        SchwabSimulator(market, speed=40.0, heartbeat_seconds=0.2) as sim,
        running_stream(sim, tmp_path) as (stream, got, task),
    ):
        started = time.monotonic()
        for closed in range(1, 6):
            await data_resumes(got, task)
            await sim.disconnect_all()
            await wait_until(lambda n=closed: alive(task) and stream.stats.connects == n + 1)
        await data_resumes(got, task)
        every_s = (time.monotonic() - started) / 5
        await asyncio.wait_for(sim.session_finished.wait(), timeout=60)
        await wait_until(lambda: alive(task) and got.volume == market.total_volume("QQQ"))
        stats = stream.stats
    print(
        f"closed 5 times (every {every_s:.2f}s): connects={stats.connects} ticks={len(got.ticks)} "
        f"volume={got.volume} traded={market.total_volume('QQQ')} bad_frames={stats.bad_frames}"
    )
    assert len(sessions(sim)) == 6 and resubscribed(sim, 1)
    assert stats.bad_frames == 0 and stats.internal_errors == 0
    assert got.volume == sum(t.size for t in market.trades)  # every share, once


async def test_a_login_refused_a_few_times_is_retried_then_streams(tmp_path: Path) -> None:
    market = SimulatedMarket(["QQQ"], seed=42, trades_per_second=10.0)
    async with SchwabSimulator(market, speed=20.0, heartbeat_seconds=0.2) as sim:
        sim.reject_logins(4)
        async with running_stream(sim, tmp_path, login_denied_attempts=5) as (stream, got, task):
            await data_resumes(got, task)
            assert (stream.stats.login_denials, stream.stats.connects) == (4, 1)
            sim.reject_logins(4)  # the count starts again after a login went through
            await sim.disconnect_all()
            await wait_until(lambda: alive(task) and stream.stats.connects == 2)
            await data_resumes(got, task)
            stats = stream.stats
    logins = len(sessions(sim))
    print(f"logins={logins} denied={stats.login_denials} connects={stats.connects} ticks={len(got.ticks)}")
    assert logins == 10 and stats.login_denials == 8 and resubscribed(sim, 0)


async def test_five_denied_logins_in_a_row_are_an_auth_error(tmp_path: Path) -> None:
    async with SchwabSimulator(SimulatedMarket(["QQQ"], seed=43)) as sim:
        sim.reject_logins(5)
        client = simulator_client(sim, tmp_path)
        stream = SchwabStream(
            client, ("QQQ",), lambda tick: None, max_backoff_s=0.01, login_denied_attempts=5
        )
        try:
            with pytest.raises(AuthError, match="denied the login 5 times"):
                await asyncio.wait_for(stream.run(), timeout=20)
        finally:
            await client.close_async_session()
    assert len(sessions(sim)) == 5 and stream.stats.connects == 0


@pytest.mark.parametrize("fault", ["silent socket", "heartbeats without data"])
async def test_a_stream_without_data_is_stale_and_reconnects(tmp_path: Path, fault: str) -> None:
    market = SimulatedMarket(["QQQ"], seed=44, trades_per_second=10.0)
    async with (
        SchwabSimulator(market, speed=20.0, heartbeat_seconds=0.05) as sim,
        running_stream(sim, tmp_path, stale_after_s=0.5) as (stream, got, task),
    ):
        await data_resumes(got, task)
        frames, seen = stream.stats.frames, stream.stats.last_data_at_by_symbol["QQQ"]
        assert abs(seen - time.time()) < 5  # wall-clock epoch seconds
        (sim.silence if fault == "silent socket" else sim.heartbeats_only)()
        faulted = time.monotonic()
        await wait_until(lambda: alive(task) and stream.stats.stale_reconnects == 1)
        detected_s = time.monotonic() - faulted
        heartbeats = stream.stats.frames - frames  # read while no data came
        await wait_until(lambda: alive(task) and stream.stats.connects == 2)
        await data_resumes(got, task)
        stats = stream.stats
    print(
        f"{fault}: stale after {detected_s:.2f}s (stale_after_s=0.5), frames read meanwhile={heartbeats}, "
        f"stale_reconnects={stats.stale_reconnects} connects={stats.connects}"
    )
    assert 0.3 < detected_s < 5
    if fault == "heartbeats without data":
        assert heartbeats > 3  # a frame every 50 ms: a watchdog on any frame never fires
    assert (stats.bad_frames, stats.internal_errors) == (0, 0)
    assert len(sessions(sim)) == 2 and resubscribed(sim, 0)
    assert sessions(sim)[1][2] == (OPTIONS, "SUBS")


@pytest.mark.parametrize("section", ["response", "notify"])
async def test_code_12_another_login_took_over_is_a_reconnect(tmp_path: Path, section: str) -> None:
    market = SimulatedMarket(["QQQ"], seed=45, trades_per_second=10.0)
    severed = {"service": "ADMIN", "timestamp": 1, "content": {"code": 12, "msg": "another login"}}
    if section == "response":
        severed |= {"command": "LOGIN", "requestid": "0"}
    async with (
        SchwabSimulator(market, speed=20.0, heartbeat_seconds=0.2) as sim,
        running_stream(sim, tmp_path) as (stream, got, task),
    ):
        await data_resumes(got, task)
        await sim.send_raw(json.dumps({section: [severed]}))
        await wait_until(lambda: alive(task) and stream.stats.connects == 2)
        await data_resumes(got, task)
        stats = stream.stats
    print(f"code 12 in {section}: connects={stats.connects} bad_frames={stats.bad_frames}")
    assert stats.bad_frames == 0 and resubscribed(sim, 0)


async def test_our_own_bugs_are_internal_errors_not_bad_frames(tmp_path: Path) -> None:
    market = SimulatedMarket(["QQQ"], seed=46, trades_per_second=10.0)
    calls = {"ticks": 0, "items": 0}

    def buggy_tick(tick: Tick) -> None:
        calls["ticks"] += 1
        if calls["ticks"] % 3 == 0:
            raise KeyError("a bug downstream")

    def picky_option(item: Mapping[str, Any]) -> None:
        calls["items"] += 1
        if calls["items"] % 2:
            raise BadOptionItem("refused on purpose")  # validation: a bad frame
        raise TypeError("a bug in the option merge")

    with capture_logs() as logs:
        async with (
            SchwabSimulator(market, speed=20.0, heartbeat_seconds=0.2) as sim,
            running_stream(sim, tmp_path, on_tick=buggy_tick, on_option=picky_option) as (stream, got, task),
        ):
            await data_resumes(got, task, ticks=30, options=4)
            stats = stream.stats
            internal, bad = stats.internal_errors, stats.bad_frames
    errors = [e for e in logs if e["event"] == "internal error"]
    print(f"internal_errors={internal} bad_frames={bad} logged_errors={len(errors)} ticks={calls['ticks']}")
    assert internal >= 10 + 2 and bad >= 2
    assert bad == stats.bad_frame_kinds.get("bad option item")  # only the deliberate refusals
    assert stats.connects == 1  # nothing reconnected
    assert {e["where"] for e in errors} == {"on_tick", "on_option"}
    assert all(isinstance(e["exc_info"], KeyError | TypeError) for e in errors)  # with the traceback
    assert len([e for e in errors if e["log_level"] == "error"]) <= 2 * len(str(internal))  # 1st, 10th...


async def test_an_expired_refresh_token_with_options_on_is_an_auth_error(tmp_path: Path) -> None:
    async with SchwabSimulator(SimulatedMarket(["QQQ"], seed=47)) as sim:
        sim.refresh_token_valid = False
        client = simulator_client(sim, tmp_path, expires_in_s=-60)  # the access token needs a refresh
        tracker = OptionsTracker(
            client, ("QQQ",), lambda rows: None, expirations=1, strikes=2, interval_s=60, max_backoff_s=0.01
        )
        stream = SchwabStream(client, ("QQQ",), tracker.on_tick, on_option=tracker.on_item)
        errors: list[BaseException] = []
        try:
            for source in (tracker.run(stream.set_option_symbols), stream.run()):
                with pytest.raises(AuthError, match="refresh token") as raised:
                    await asyncio.wait_for(source, timeout=20)
                errors.append(raised.value)
        finally:
            await client.close_async_session()
    print(f"sources raised: {[f'{type(e).__name__} from {type(e.__cause__).__name__}' for e in errors]}")
    assert [type(e.__cause__).__name__ for e in errors] == ["OAuthError"] * 2  # mapped once, at the boundary
    assert not any(path.startswith("/marketdata/") for _, path in sim.rest_requests)  # never got that far
    assert stream.stats.connects == 0
