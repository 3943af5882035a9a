"""Recorded LEVELONE frames, built offline as the simulator sends them (for benchmarks and parity tests).

`equity_frames` replays a `SimulatedMarket`: one frame per event that changes a subscribed field,
a full item first and then only the changed fields, as `SchwabSimulator` does. `option_frames`
quotes `contracts` contracts of an `OptionBook` in every frame, the first frame full and the rest
changed fields only, while the underlying walks. Both carry only the fields our streams subscribe
(`EQUITY_FIELDS`, `OPTION_FIELDS`), keyed as on the wire. Deterministic for a given seed and
`session_date` (by default `RECORDED_DAY`, never today: a recording must not change with the date).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import date
from typing import Any

from streaming_service.models import OptionContract
from streaming_service.simulator.connection import EQUITY_SERVICE, OPTION_SERVICE, wire_fields
from streaming_service.simulator.market import SimulatedMarket
from streaming_service.simulator.options import OptionBook, occ_symbol

__all__ = ["RECORDED_DAY", "Recording", "equity_frames", "option_frames"]

RECORDED_DAY = date(2026, 11, 18)  # a Wednesday with a full session; its first expiration is 0DTE

_EQUITY_KEYS = frozenset({"3", "8", "9", "35"})  # EQUITY_FIELDS less SYMBOL ("key" on the wire)
_OPTION_KEYS = frozenset(
    {"2", "3", "4", "8", "9", "10", "12", "20", "21", "23", "26", "28", "29", "30", "31"}
)  # OPTION_FIELDS less SYMBOL


@dataclass(frozen=True, slots=True)
class Recording:
    """`frames`: JSON texts in order; `now_s`: a clock (epoch s) at which every time in them is
    valid (just after the last); `contracts`: the option contracts quoted (empty for equities)."""

    frames: list[str]
    now_s: float
    contracts: dict[str, OptionContract]


def _frame(service: str, timestamp_ms: int, items: list[dict[str, Any]]) -> str:
    entry = {"service": service, "timestamp": timestamp_ms, "command": "SUBS", "content": items}
    return json.dumps({"data": [entry]}, separators=(",", ":"))


def _changed(sent: dict[str, dict[str, Any]], symbol: str, fields: dict[str, Any]) -> dict[str, Any]:
    previous = sent.get(symbol)
    sent[symbol] = {**(previous or {}), **fields}
    if previous is None:
        return fields
    return {k: v for k, v in fields.items() if previous.get(k) != v}


def equity_frames(
    count: int, *, symbol: str = "QQQ", seed: int = 1, session_date: date = RECORDED_DAY
) -> Recording:
    """`count` LEVELONE_EQUITIES frames of one symbol (trades and quotes, partial updates)."""
    market = SimulatedMarket(
        [symbol], seed=seed, trades_per_second=50.0, session_seconds=23_400.0, session_date=session_date
    )
    frames: list[str] = []
    sent: dict[str, dict[str, Any]] = {}
    last_ms, offset = market.open_ms, 0.0
    while len(frames) < count:
        offset += 60.0
        events = market.events_until(offset)
        if not events:
            raise ValueError(f"the session has fewer than {count} frames")
        for event in events:
            fields = {k: v for k, v in wire_fields(event).items() if k in _EQUITY_KEYS}
            changed = _changed(sent, symbol, fields)
            if changed:
                item = {"key": symbol, "delayed": False, **changed}
                frames.append(_frame(EQUITY_SERVICE, event.timestamp_ms, [item]))
                last_ms = event.timestamp_ms
            if len(frames) == count:
                break
    return Recording(frames, last_ms / 1000 + 1, {})


def option_frames(
    count: int, *, contracts: int = 80, distinct: int = 200, seed: int = 1, session_date: date = RECORDED_DAY
) -> Recording:
    """`count` LEVELONE_OPTIONS frames of `contracts` contracts (an even number): the first quotes
    all of them, the next `distinct - 1` (repeated in a cycle) only those whose fields changed, as
    Schwab sends them (no state depends on their order)."""
    market = SimulatedMarket(["QQQ"], seed=seed, session_date=session_date)
    book = OptionBook("QQQ", market.session_date, 500.0, seed=seed)
    strikes = contracts // 4  # two expirations, calls and puts
    middle = len(book.strikes) // 2
    chosen: dict[str, OptionContract] = {}
    for expiration in book.expirations[:2]:
        for strike in book.strikes[middle - strikes // 2 : middle - strikes // 2 + strikes]:
            for call in (True, False):
                symbol = occ_symbol("QQQ", expiration, "C" if call else "P", strike)
                chosen[symbol] = OptionContract(symbol, "QQQ", "CALL" if call else "PUT", strike, expiration)
    rng = random.Random(seed)
    spot, now_ms = 500.0, market.open_ms + 60_000
    sent: dict[str, dict[str, Any]] = {}
    cycle: list[str] = []
    while len(cycle) < min(count, distinct):
        items = []
        for symbol in chosen:
            sim = book.contract(symbol)
            assert sim is not None
            quote = book.quote(sim, spot, now_ms, trade=True)
            fields = {k: v for k, v in quote.items() if k in _OPTION_KEYS}
            if changed := _changed(sent, symbol, fields):
                items.append({"key": symbol, "delayed": False, **changed})
        if items:
            cycle.append(_frame(OPTION_SERVICE, now_ms, items))
        spot = round(spot + rng.choice((-0.05, 0.05)) * rng.randint(1, 4), 2)
        now_ms += 1_000
    frames = [cycle[0], *(cycle[1 + i % (len(cycle) - 1)] for i in range(count - 1))] if cycle else []
    return Recording(frames[:count], now_ms / 1000 + 1, chosen)
