"""No frame stops the stream. Frames that crashed the process, sent while streaming and as the reply
that login, SUBS or ADD await, each count as one bad frame. Then 10,000 hostile frames (those,
plus seeded random mutations of real frames) are interleaved with the simulator's real data: there
is no crash, each one is counted, the log stays small, and the volume received equals what the
simulator traded, exactly. The real schwab-py client talks to the simulator over a WebSocket.
`SOAK=1` sends 200,000 instead.

The QuoteMerger's validation rules have their unit tests in test_merge.py.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
from harness import Received, alive, streaming
from polling import wait_until
from structlog.testing import capture_logs

from streaming_service.simulator import SchwabSimulator, SimulatedMarket
from streaming_service.simulator.options import occ_symbol
from streaming_service.sources.frames import BadFrame, FrameDecoder
from streaming_service.sources.merge import QuoteMerger
from streaming_service.sources.schwab import SchwabStream

EQUITIES, OPTIONS = "LEVELONE_EQUITIES", "LEVELONE_OPTIONS"
SOAK = bool(os.environ.get("SOAK"))
HOSTILE = 200_000 if SOAK else 10_000

#: The single frames that crashed the process before, and why.
CRASHERS = {
    "empty response list": '{"response":[]}',  # IndexError in schwab-py
    "trade time 1e300": json.dumps(  # OverflowError in datetime.fromtimestamp
        {
            "data": [
                {
                    "service": EQUITIES,
                    "timestamp": 1,
                    "command": "SUBS",
                    "content": [{"key": "QQQ", "35": 1e300}],
                }
            ]
        }
    ),
    "100k-deep JSON": "[" * 100_000,  # RecursionError in json.loads
    "invalid JSON": "this is not json",  # UnparsableMessage
    "bare number": "123",  # TypeError in schwab-py ('response' in 123)
}


def running_stream(
    sim: SchwabSimulator, tmp_path: Path, **options: Any
) -> AbstractAsyncContextManager[tuple[SchwabStream, Received, asyncio.Task[None]]]:
    """`harness.streaming` with replies awaited for 1 s."""
    return streaming(sim, tmp_path, request_timeout_s=1.0, **options)


def contracts(sim: SchwabSimulator, *strikes: float) -> set[str]:
    book = sim.books["QQQ"]
    return {occ_symbol("QQQ", book.expirations[1], "C", strike) for strike in strikes}


def logins(sim: SchwabSimulator) -> int:
    return sum(1 for service, command, _ in sim.stream_requests if (service, command) == ("ADMIN", "LOGIN"))


# --- the frames that used to crash -----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CRASHERS))
async def test_a_frame_that_crashed_the_process_is_one_bad_frame(tmp_path: Path, name: str) -> None:
    market = SimulatedMarket(["QQQ"], seed=31, trades_per_second=10.0)
    async with (
        SchwabSimulator(market, speed=20.0, heartbeat_seconds=0.2) as sim,
        running_stream(sim, tmp_path) as (stream, got, task),
    ):
        await wait_until(lambda: alive(task) and len(got.ticks) > 5)
        await sim.send_raw(CRASHERS[name])
        await wait_until(lambda: alive(task) and stream.stats.bad_frames == 1)
        ticks = len(got.ticks)
        await wait_until(lambda: alive(task) and len(got.ticks) > ticks + 5)  # data goes on
        stats = stream.stats
    print(f"{name}: bad_frames={stats.bad_frames} kinds={stats.bad_frame_kinds} connects={stats.connects}")
    assert stats.connects == 1 and stats.internal_errors == 0  # a bad frame never forces a reconnect


REPLY_FAULTS = [
    # (how, service, command, frame): "replace" the reply, or "precede" it while it is awaited
    ("replace", "ADMIN", "LOGIN", "empty response list"),  # a malformed reply: reconnect at once
    ("replace", "ADMIN", "LOGIN", "invalid JSON"),  # garbled beyond recognition: the request times out
    ("replace", EQUITIES, "SUBS", "100k-deep JSON"),
    ("replace", OPTIONS, "SUBS", "bare number"),
    ("replace", OPTIONS, "ADD", "bare number"),
    ("replace", OPTIONS, "ADD", "empty response list"),
    ("precede", "ADMIN", "LOGIN", "bare number"),  # a stray bad frame: counted, the reply still counts
    ("precede", EQUITIES, "SUBS", "invalid JSON"),
    ("precede", OPTIONS, "ADD", "100k-deep JSON"),
]


async def cause(
    stream: SchwabStream, sim: SchwabSimulator, fault: tuple[str, str, str, str], options: set[str]
) -> int:
    """Make a frame replace or precede the reply to the next request as `fault` says. A reconnect
    sends LOGIN and the SUBS; a new option window (`options`) sends the ADD. Return how many
    more logins that takes."""
    how, service, command, name = fault
    inject = sim.replace_next_reply if how == "replace" else sim.precede_next_reply
    inject(CRASHERS[name], service=service, command=command)
    if command == "ADD":
        await stream.set_option_symbols(options)
    else:
        await sim.disconnect_all()
    return (command != "ADD") + (how == "replace")  # a bad reply costs one more


@pytest.mark.parametrize(("how", "service", "command", "name"), REPLY_FAULTS)
async def test_a_bad_frame_while_a_reply_is_awaited_is_counted_and_never_fatal(
    tmp_path: Path, how: str, service: str, command: str, name: str
) -> None:
    market = SimulatedMarket(["QQQ"], seed=32, trades_per_second=10.0)
    async with (
        SchwabSimulator(market, speed=20.0, heartbeat_seconds=0.2) as sim,
        running_stream(sim, tmp_path) as (stream, got, task),
    ):
        await stream.subscribed.wait()
        await stream.set_option_symbols(contracts(sim, 500.0))
        await wait_until(lambda: alive(task) and bool(got.options) and len(got.ticks) > 3)
        sessions = 1 + await cause(stream, sim, (how, service, command, name), contracts(sim, 500.0, 501.0))
        await wait_until(lambda: alive(task) and stream.stats.bad_frames == 1)
        await wait_until(lambda: alive(task) and stream.subscribed.is_set() and logins(sim) == sessions)
        ticks = len(got.ticks)
        await wait_until(lambda: alive(task) and len(got.ticks) > ticks + 3)
        stats = stream.stats
    requests = [(s, c) for s, c, _ in sim.stream_requests]
    print(f"{name} {how}s the {command} reply: bad_frames={stats.bad_frames} connects={stats.connects}")
    assert stats.internal_errors == 0 and stats.bad_frames == 1
    assert requests.count(("ADMIN", "LOGIN")) == sessions
    assert stats.connects == sessions - (service == "ADMIN" and how == "replace")  # logins that went through
    after = requests[len(requests) - 1 - requests[::-1].index(("ADMIN", "LOGIN")) :]  # the last session
    assert after[:3] == [("ADMIN", "LOGIN"), (EQUITIES, "SUBS"), (OPTIONS, "SUBS")]
    options = [set(p["keys"].split(",")) for s, c, p in sim.stream_requests if s == OPTIONS and c != "UNSUBS"]
    assert set().union(*options) == (
        contracts(sim, 500.0, 501.0) if command == "ADD" else contracts(sim, 500.0)
    )


# --- hostile frames ----------------------------------------------------------------------------------------

BAD_VALUES: dict[str, list[Any]] = {
    "key": [None, 5, "", "SPY", "qqq", [], {"a": 1}, True],
    "3": [0, -1, 1e8, 1e300, math.nan, math.inf, "500", None, True, [], {}, 10**30],
    "8": [-1, 1.5, "100", None, math.nan, -math.inf, 2**63, 1e19, 10**30, 1e12, True, []],
    "9": [-1, 0.5, "x", None, math.nan, 2**64, {}],
    "35": [0, -5, 1e300, 4_102_444_800_000, 1, "t", None, math.nan, True, 10**30, "FUTURE", "YESTERDAY"],
}
ENVELOPES = [
    {"data": 5}, {"data": []}, {"data": [5]}, {"data": [{"service": 5}]},
    {"data": [{"service": EQUITIES, "content": "oops"}]}, {"data": [{"service": EQUITIES, "content": []}]},
    {"data": [{"service": EQUITIES, "content": [5]}]},
    {"data": [{"service": "CHART_EQUITY", "content": [{}]}]},
    {"response": {}}, {"response": [{"requestid": "abc"}]}, {"response": [5]},
    {"response": [{"service": "ADMIN", "command": "LOGIN", "requestid": "7",
                   "content": {"code": 0, "msg": "ok"}}]},  # an unsolicited reply
    {"notify": [5]}, {"notify": []}, {"notify": [{"service": 5}]}, {}, {"foo": 1}, [], "str", None, True,
]  # fmt: skip


def item_frame(item: dict[str, Any], clock_ms: int) -> dict[str, Any]:
    return {"data": [{"service": EQUITIES, "timestamp": clock_ms, "command": "SUBS", "content": [item]}]}


def deep_item_frame(depth: int) -> str:
    """A data frame whose price is a list nested `depth` deep (schwab-py deep-copies data frames)."""
    return (
        f'{{"data":[{{"service":"{EQUITIES}","content":[{{"key":"QQQ","3":{"[" * depth}1{"]" * depth}}}]}}]}}'
    )


def hostile_frames(rng: random.Random, count: int, clock: Callable[[], float]) -> list[str | bytes]:
    """`count` frames, each of which must be refused exactly once: see the module docstring."""
    frames: list[str | bytes] = []
    crashers = list(CRASHERS.values())
    while len(frames) < count:
        now = int(clock() * 1000)
        real = {"key": "QQQ", "delayed": False, "3": 500.25, "9": 100, "35": now - 1_000}
        draw = rng.random()
        if draw < 0.05:
            frames.append(rng.choice(crashers) if rng.random() < 0.9 else "[" * 100_000)
        elif draw < 0.55:  # a real item with one validated field made bad
            name = rng.choice(list(BAD_VALUES))
            value = rng.choice(BAD_VALUES[name])
            if name == "35" and value in ("FUTURE", "YESTERDAY"):  # still so when it arrives
                value = now + (7 if value == "FUTURE" else -1) * 86_400_000
            frames.append(json.dumps(item_frame({**real, name: value}, now)))
        elif draw < 0.70:
            frames.append(json.dumps(rng.choice(ENVELOPES)))
        elif draw < 0.80:  # truncated: a strict prefix of a JSON object is never valid JSON
            text = json.dumps(item_frame({**real, "8": 1_000}, now))
            frames.append(text[: rng.randrange(1, len(text))])
        elif draw < 0.85:
            depth = rng.choice([20, 200, 900]) if rng.random() < 0.5 else rng.randrange(1_000, 5_000)
            frames.append(deep_item_frame(depth) if depth < 1_000 else "[" * depth)
        else:
            frames.append(rng.randbytes(rng.randrange(1, 64)))
    return frames


def test_the_decoder_and_merger_refuse_hostile_frames_with_bad_frame_only() -> None:
    """Without a network: every hostile frame raises `BadFrame` (nothing else) from the decoder
    (envelope) or the merger (items), which stays usable."""
    clock = SimulatedMarket(["QQQ"]).open_ms / 1000 + 3_600.0
    decoder = FrameDecoder([EQUITIES], on_bad=lambda exc: None)
    merger = QuoteMerger(symbols=("QQQ",), now=lambda: clock)
    merger.apply({"key": "QQQ", "3": 500.0, "8": 1_000, "35": int(clock * 1000)})  # wire keys
    kinds: dict[str, int] = {}
    total = 1_000
    # real data brings its price and time: a refused item that carried them made them unknown
    real = {"key": "QQQ", "3": 500.0, "35": int(clock * 1000)}
    for index, frame in enumerate(hostile_frames(random.Random(7), HOSTILE, lambda: clock)):
        if index % 2 == 0:  # real data between every two hostile frames, as on the wire below
            total += 1
            tick = merger.apply({**real, "8": total})
            assert tick is not None and tick.volume == 1
        with pytest.raises(BadFrame) as refused:
            message = decoder.parse(frame)
            for item in message.get("data", [{}])[0].get("content", []):
                merger.apply(item)
            if "response" in message:
                raise BadFrame("an unsolicited reply", kind="unexpected response")
        kinds[refused.value.kind] = kinds.get(refused.value.kind, 0) + 1
    tick = merger.apply({**real, "8": total + 100})
    print(f"decoder+merger: {HOSTILE} hostile frames refused, {len(kinds)} kinds: {kinds}")
    assert tick is not None and tick.volume == 100
    assert len(kinds) >= 15


@pytest.mark.timeout(1_200 if SOAK else 120)
async def test_ten_thousand_hostile_frames_interleaved_with_real_data(tmp_path: Path) -> None:
    rng = random.Random(2026)
    session_s = 900.0 + HOSTILE / 40  # real frames enough to carry them, two after each
    market = SimulatedMarket(["QQQ"], seed=33, trades_per_second=20.0, session_seconds=session_s)
    async with SchwabSimulator(market, speed=150.0, heartbeat_seconds=0.2) as sim:
        with capture_logs() as logs:
            async with running_stream(sim, tmp_path) as (stream, got, task):
                await stream.subscribed.wait()
                await stream.set_option_symbols(contracts(sim, 500.0))
                await wait_until(lambda: alive(task) and len(got.ticks) > 10)
                # bad frames instead of, or before, the replies login, SUBS and ADD await.
                # The market waits meanwhile, so that every trade is delivered (sim.sent_trades).
                sim.pause()
                sessions = 1
                for count, fault in enumerate(REPLY_FAULTS, 1):
                    sessions += await cause(stream, sim, fault, contracts(sim, *range(500, 502 + count)))
                    await wait_until(
                        lambda n=count, c=sessions: (
                            alive(task)
                            and stream.stats.bad_frames == n
                            and logins(sim) == c
                            and stream.subscribed.is_set()
                        )
                    )
                replies = REPLY_FAULTS
                connects = stream.stats.connects
                sim.resume()

                frames = hostile_frames(rng, HOSTILE, sim.clock)
                sim.interleave(frames, per_data_frame=2)
                total = len(replies) + HOSTILE
                await wait_until(lambda: alive(task) and sim.interleave_pending == 0, within=900)
                assert sim.interleaved_sent == HOSTILE
                await asyncio.wait_for(sim.session_finished.wait(), timeout=900)
                # A hostile QQQ item that carried a LAST_PRICE made the price unknown: the real trades
                # after it wait, refused, for the next item with a price, and their shares with them
                # (merge.py, "Refused items"). The session's last trades may have none: send it.
                last = market.trades[-1]
                priced = {"key": "QQQ", "3": last.price, "8": last.total_volume, "35": last.timestamp_ms}
                frame = {"service": EQUITIES, "timestamp": last.timestamp_ms, "content": [priced]}
                await sim.send_raw(json.dumps({"data": [{**frame, "command": "SUBS"}]}))
                await wait_until(lambda: alive(task) and got.volume == market.total_volume("QQQ"))
                stats = stream.stats
                waited = stats.bad_frame_kinds.get("trade without a price", 0)

    shipped = sum(t.size for t in sim.sent_trades)
    warnings = [e for e in logs if e["event"] == "bad frame skipped" and e["log_level"] == "warning"]
    loud_at_most = sum(len(str(n)) for n in stats.bad_frame_kinds.values())  # 1, 10, 100, ... per kind
    print(
        f"hostile={HOSTILE} bad_frames={stats.bad_frames} kinds={len(stats.bad_frame_kinds)} "
        f"internal_errors={stats.internal_errors} connects={stats.connects} ticks={len(got.ticks)} "
        f"volume={got.volume} traded={market.total_volume('QQQ')} delivered_trades={shipped} "
        f"warning_lines={len(warnings)} frames={stats.frames} trades_that_waited_for_a_price={waited}"
    )
    assert stats.bad_frames == total + waited and stats.internal_errors == 0
    assert stats.connects == connects  # 10,000 bad frames, not one reconnect
    assert got.volume == shipped == market.total_volume("QQQ")  # exact: every share, once
    assert all(0 < t.price < 1e8 and t.volume > 0 for t in got.ticks)
    assert len(warnings) <= loud_at_most  # the first of each kind, then at 10, 100, 1000...
    assert all(len(e["reason"]) <= 200 for e in logs if e["event"] == "bad frame skipped")
    assert max(len(str(v)) for e in logs for v in e.values()) <= 1_000  # never a 900 KB line
