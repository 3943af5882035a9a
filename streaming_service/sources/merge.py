"""LEVELONE_EQUITIES items → trades: merge partial updates per symbol, validating before any change.

Schwab sends a full item per symbol first, then only changed fields. Items are read as they come
off the wire, with Schwab's numeric field keys (schwab-py would relabel them; we skip that, see
wire.py): "key" the symbol, "3" LAST_PRICE, "8" TOTAL_VOLUME, "9" LAST_SIZE, "35"
TRADE_TIME_MILLIS (the constants below; messages and kinds use the names). A trade is a rise of the cumulative
TOTAL_VOLUME and its volume is the rise, so a dropped frame never loses volume: it folds into the
next trade. Quote-only updates are not trades.

Checks. An item that fails any of them raises `BadFrame` and merges nothing (see "Refused items"):
- `key` is a symbol we subscribed to;
- LAST_PRICE is finite and 0 < price < 1e8 (equity_data.price is DECIMAL(10,2));
- TOTAL_VOLUME and LAST_SIZE are whole numbers with 0 ≤ n < 2**63 (BIGINT);
- TRADE_TIME_MILLIS is at most `max_future_s` after `now()` and on the current exchange date
  (the America/New_York date of `now()`). If no trade time is known, the frame's own timestamp
  is used, and it must pass the same checks;
- null counts as a wrong type: Schwab leaves unchanged fields out, it never sends null.

Refused items. The stream sends a field only when it changes, so once an item is refused the
server believes we hold the values it carried, and it will not send them again until they change.
A refused item therefore merges none of its fields, and the symbol's LAST_PRICE and
TRADE_TIME_MILLIS are forgotten if the item carried them (whatever their values): the merged state
never holds a value the stream has since replaced. The next trade is priced only with a LAST_PRICE
accepted after the refusal, its own item's or a later one's: a trade whose item brings no price
before then is refused too ("trade without a price"), and its shares fold into the next trade
that has one, as a dropped frame's do (TOTAL_VOLUME is cumulative: no share is lost or counted
twice; they are stamped with that trade's time). A trade without a trade time of its own is stamped
with its frame's timestamp. A refused item never moves the TOTAL_VOLUME baseline; a refused value
is only remembered for the confirmations below. A field the refused item did not carry stays known.

Days. The first TOTAL_VOLUME of a symbol on an exchange date is the baseline: it counts nothing.
Every accepted trade time falls on the current exchange date. So when a symbol's state belongs to
an earlier date, a new day has begun: the baseline and the trade time are dropped, and the next
TOTAL_VOLUME becomes the new day's baseline. The last price stays, because it is still the last
price. Yesterday's baseline therefore never turns this morning's first snapshot into a trade.
Shares traded today before that first value are not counted by the stream; they fall in a gap
(nothing was connected to see them).

Morning reset. Schwab resets TOTAL_VOLUME to 0 once each morning, before the open (about 07:28
New York time for equities). A process streaming through the night (SKIP_MARKET_HOURS=true) takes
the date's baseline from the first TOTAL_VOLUME after midnight, which is still yesterday's total,
so it sees the reset as a fall. The first fall of a symbol's TOTAL_VOLUME on an exchange date, if
it comes before 09:30, is therefore that reset: it becomes the baseline at once and counts nothing
(shares traded between the reset and that value, usually none, are not counted by the stream).
Any other fall is refused as below.

Implausible changes. Within a day TOTAL_VOLUME only rises. Two changes are refused (`BadFrame`,
kinds "volume fall" and "volume jump"):
- a fall;
- a rise larger than `max_volume_jump` times max(previous TOTAL_VOLUME, `volume_floor`). The floor
  keeps the first trades after a small baseline (e.g. early in the day) from being refused.
A replayed old frame or a stray value is never believed, so the same shares are never counted
twice. Each refused value is remembered. When `confirmations` refused values in a row agree with
each other (each at or above the one before, and not a jump from it), the last one becomes the new
baseline and nothing is counted. This way a real change of level cannot stall the symbol for the
rest of the day: for example after an outage longer than the jump limit allows, or when Schwab
corrects its total.

Connections. The first TOTAL_VOLUME of a symbol on every connection is a baseline too: call
`new_connection()` before subscribing again, and what was traded while the stream did not watch is
never counted from TOTAL_VOLUME (it includes the pre-market, and a gap's shares are credited per
minute from price history: `recovery`). `on_baseline(symbol, at_ms, rise)`, if set, is called at
each baseline: `at_ms` its time, `rise` its rise over the last TOTAL_VOLUME of the previous
connection of the same date (None if there is none, or if it fell).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from streaming_service.models import Tick
from streaming_service.sources.frames import BadFrame, excerpt

__all__ = [
    "LAST_PRICE",
    "LAST_SIZE",
    "PRICE_LIMIT",
    "SYMBOL",
    "TOTAL_VOLUME",
    "TRADE_TIME_MILLIS",
    "VOLUME_LIMIT",
    "WIRE_NAMES",
    "QuoteMerger",
]

log = structlog.get_logger(__name__)
NEW_YORK = ZoneInfo("America/New_York")
PRICE_LIMIT = 1e8  # DECIMAL(10,2) holds less than this
VOLUME_LIMIT = 2**63  # BIGINT holds less than this
_REGULAR_OPEN = clock_time(9, 30)  # New York: Schwab's morning reset of TOTAL_VOLUME comes before it
_MISSING: Any = object()
# LEVELONE_EQUITIES wire keys (StreamClient.LevelOneEquityFields values; tests/test_wire_parity.py)
SYMBOL = "key"
LAST_PRICE = "3"
TOTAL_VOLUME = "8"
LAST_SIZE = "9"
TRADE_TIME_MILLIS = "35"
#: wire key → schwab-py's name, for messages (and to relabel in tests)
WIRE_NAMES = {
    LAST_PRICE: "LAST_PRICE",
    TOTAL_VOLUME: "TOTAL_VOLUME",
    LAST_SIZE: "LAST_SIZE",
    TRADE_TIME_MILLIS: "TRADE_TIME_MILLIS",
}


@dataclass(slots=True)
class _SymbolState:
    day: int  # start (epoch ms) of the exchange date this state belongs to
    last_price: float | None = None
    total_volume: int | None = None
    trade_time_ms: int | None = None
    suspect: int | None = None  # the last refused TOTAL_VOLUME, and how many agreeing ones in a row
    suspects: int = 0
    reset_seen: bool = False  # the date's first fall before the open was taken as the morning reset
    before_gap: int | None = None  # the last TOTAL_VOLUME of the previous connection (same date)


class QuoteMerger:
    """Merges partial LEVELONE_EQUITIES items into trades; see the module docstring.

    `symbols`: the subscribed symbols (None accepts any). `now`: the clock trade times are checked
    against, in epoch seconds (the wall clock, or a simulator's market clock)."""

    def __init__(
        self,
        *,
        symbols: Collection[str] | None = None,
        max_volume_jump: float = 10.0,
        volume_floor: int = 1_000_000,
        max_future_s: float = 5.0,
        confirmations: int = 3,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._symbols = frozenset(symbols) if symbols is not None else None
        self._max_jump = max_volume_jump
        self._floor = volume_floor
        self._max_future_ms = max_future_s * 1000
        self._confirmations = confirmations
        self._now = now
        self._state: dict[str, _SymbolState] = {}
        self._day = (0.0, 0.0)  # [start, end) of the current exchange date, epoch ms
        self._open_ms = 0.0  # 09:30 of that date, epoch ms
        self.on_baseline: Callable[[str, int, int | None], None] | None = None

    def apply(self, item: Mapping[str, Any], frame_time_ms: float | None = None) -> Tick | None:
        """Merge one item (wire keys); return the trade it reports, if any. Raises `BadFrame`, merging
        nothing: the price and trade time it carried are forgotten, a refused TOTAL_VOLUME is
        remembered (see the module docstring)."""
        symbol = item.get(SYMBOL)
        if not isinstance(symbol, str) or not symbol:
            raise BadFrame(f"item without a symbol key: {excerpt(item)}", kind="bad symbol")
        if self._symbols is not None and symbol not in self._symbols:
            raise BadFrame(f"{excerpt(symbol)} is not subscribed", kind="unsubscribed symbol")
        try:
            # each field: a fast path for the usual exact type and range, else the full check (raises)
            get = item.get
            price = get(LAST_PRICE)
            if type(price) is not float or not 0.0 < price < PRICE_LIMIT:
                price = _number(item, LAST_PRICE, symbol)
                if price is not None and not 0 < price < PRICE_LIMIT:
                    raise BadFrame(f"{symbol}: LAST_PRICE {price!r} out of range", kind="bad LAST_PRICE")
            total = get(TOTAL_VOLUME)
            if type(total) is not int or not 0 <= total < VOLUME_LIMIT:
                total = _count(item, TOTAL_VOLUME, symbol)
            size = get(LAST_SIZE)
            if type(size) is not int or not 0 <= size < VOLUME_LIMIT:
                _count(item, LAST_SIZE, symbol)
            now_ms = self._now() * 1000
            day = self._today(now_ms)
            trade_ms = get(TRADE_TIME_MILLIS)
            start, end = self._day
            if type(trade_ms) is int and start <= trade_ms < end and trade_ms <= now_ms + self._max_future_ms:
                time_ms: int | None = trade_ms  # today's, not in the future: what `_time` would accept
            else:  # absent, or the full checks (null, other types, other days... raise)
                time_ms = self._time(_number(item, TRADE_TIME_MILLIS, symbol), now_ms, symbol, "trade time")

            old = self._state.get(symbol)
            # today's state; a new one at the symbol's first item, or its first of a new exchange date
            state = old if old is not None and old.day == day else _SymbolState(day)
            previous, known_time = state.total_volume, state.trade_time_ms
            last_price = price if price is not None else (old.last_price if old is not None else None)
            tick = None
            if total is not None and previous is not None and total != previous:
                if total < previous and not state.reset_seen and now_ms < self._open_ms:
                    state.reset_seen = True  # Schwab's morning reset: the new baseline
                    log.info("TOTAL_VOLUME reset before the open: new baseline", symbol=symbol,
                             previous=previous, total=total)  # fmt: skip
                elif total < previous or total - previous > self._allowed(previous):
                    self._refuse_unless_confirmed(symbol, state, previous, total)
                else:
                    trade_ms = time_ms if time_ms is not None else known_time
                    if trade_ms is not None and last_price is not None:  # the usual trade, at once
                        stamp = datetime.fromtimestamp(trade_ms / 1000, UTC)
                        tick = Tick(symbol, stamp, last_price, total - previous)
                    else:
                        volume = total - previous
                        tick = self._trade(symbol, last_price, trade_ms, frame_time_ms, now_ms, volume)

            state.last_price = last_price
            state.trade_time_ms = time_ms if time_ms is not None else known_time
            if total is not None:
                state.total_volume = total
                state.suspect, state.suspects = None, 0
            self._state[symbol] = state
            if total is not None and previous is None:
                self._baseline(symbol, state, total, frame_time_ms, now_ms)
            return tick
        except BadFrame:
            self._forget_carried(symbol, item)
            raise

    def new_connection(self) -> None:
        """The next TOTAL_VOLUME of every symbol is a baseline (see "Connections" in the module
        docstring); the last price and trade time are forgotten (the first snapshot sends them)."""
        for state in self._state.values():
            if state.total_volume is not None:
                state.before_gap = state.total_volume
            state.total_volume = state.trade_time_ms = state.last_price = None
            state.suspect, state.suspects = None, 0

    def state(self, symbol: str) -> dict[str, Any] | None:
        """`symbol`'s merged state (day, last_price, total_volume, trade_time_ms); None if nothing
        was seen yet."""
        state = self._state.get(symbol)
        if state is None:
            return None
        return {
            "day": state.day,
            "last_price": state.last_price,
            "total_volume": state.total_volume,
            "trade_time_ms": state.trade_time_ms,
        }

    def _baseline(self, symbol: str, state: _SymbolState, total: int, frame_time_ms: float | None,
                  now_ms: float) -> None:  # fmt: skip
        """Report a baseline to `on_baseline` (see "Connections" in the module docstring)."""
        before, state.before_gap = state.before_gap, None
        if self.on_baseline is None:
            return
        at_ms = now_ms  # it holds the trades up to then, by our clock or the frame's if that is later
        if frame_time_ms is not None and _is_number(frame_time_ms):
            at_ms = max(frame_time_ms, now_ms)
        rise = total - before if before is not None and total >= before else None
        self.on_baseline(symbol, int(at_ms), rise)

    def _forget_carried(self, symbol: str, item: Mapping[str, Any]) -> None:
        """After `item` was refused: forget the price and trade time it carried (module docstring)."""
        state = self._state.get(symbol)
        if state is not None:
            if LAST_PRICE in item:
                state.last_price = None
            if TRADE_TIME_MILLIS in item:
                state.trade_time_ms = None

    def _allowed(self, previous: int) -> float:
        return self._max_jump * max(previous, self._floor)

    def _refuse_unless_confirmed(self, symbol: str, state: _SymbolState, previous: int, total: int) -> None:
        """Raise `BadFrame` for an implausible TOTAL_VOLUME unless it confirms the refused ones before."""
        suspect = state.suspect
        agrees = suspect is not None and suspect <= total <= suspect + self._allowed(suspect)
        state.suspect, state.suspects = total, (state.suspects + 1 if agrees else 1)
        if state.suspects >= self._confirmations:
            log.warning(
                "TOTAL_VOLUME moved to a new level and stayed there: new baseline, nothing counted",
                symbol=symbol,
                previous=previous,
                total=total,
                confirmations=state.suspects,
            )
            return
        kind = "volume fall" if total < previous else "volume jump"
        raise BadFrame(f"{symbol}: TOTAL_VOLUME went from {previous} to {total}", kind=kind)

    def _trade(
        self,
        symbol: str,
        price: float | None,
        trade_ms: int | None,
        frame_time_ms: float | None,
        now_ms: float,
        volume: int,
    ) -> Tick:
        """The trade, stamped with the trade time, else the frame's timestamp; raises `BadFrame`."""
        if price is None:
            raise BadFrame(f"{symbol}: a trade before any accepted LAST_PRICE", kind="trade without a price")
        if trade_ms is None and frame_time_ms is not None:
            frame_time = frame_time_ms if _is_number(frame_time_ms) else _MISSING
            trade_ms = self._time(frame_time, now_ms, symbol, "frame timestamp")
        if trade_ms is None:
            raise BadFrame(f"{symbol}: a trade without any time", kind="trade without a time")
        return Tick(symbol, datetime.fromtimestamp(trade_ms / 1000, UTC), price, volume)

    def _time(self, value: float | None, now_ms: float, symbol: str, what: str) -> int | None:
        if value is None:
            return None
        if value is _MISSING or value <= 0:
            raise BadFrame(f"{symbol}: {what} {excerpt(value)} is not a time", kind=f"bad {what}")
        if value > now_ms + self._max_future_ms:
            raise BadFrame(f"{symbol}: {what} {value!r} is in the future", kind=f"{what} in the future")
        start, end = self._day
        if not start <= value < end:
            raise BadFrame(f"{symbol}: {what} {value!r} is not today", kind=f"{what} of another day")
        return int(value)

    def _today(self, now_ms: float) -> int:
        """Start of the exchange date of `now_ms` (epoch ms); keeps `_day` current."""
        start, end = self._day
        if not start <= now_ms < end:
            today = datetime.fromtimestamp(now_ms / 1000, NEW_YORK).date()
            midnight = datetime.combine(today, clock_time(0), NEW_YORK)
            following = datetime.combine(today + timedelta(days=1), clock_time(0), NEW_YORK)
            self._day = (midnight.timestamp() * 1000, following.timestamp() * 1000)
            self._open_ms = datetime.combine(today, _REGULAR_OPEN, NEW_YORK).timestamp() * 1000
        return int(self._day[0])


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -VOLUME_LIMIT < value < VOLUME_LIMIT  # bigger ints overflow float conversions
    return isinstance(value, float) and math.isfinite(value)


def _number(item: Mapping[str, Any], key: str, symbol: str) -> float | None:
    """The field's value if present; None if absent. Raises `BadFrame` if present but not a number."""
    value = item.get(key, _MISSING)
    kind = type(value)  # fast paths first: exact floats and ints, as JSON gives them
    if kind is float:
        if value - value == 0.0:  # finite (inf - inf and nan - nan are nan)
            return value  # type: ignore[no-any-return]
    elif kind is int:
        if -VOLUME_LIMIT < value < VOLUME_LIMIT:
            return value  # type: ignore[no-any-return]
    elif value is _MISSING:
        return None
    if not _is_number(value):
        name = WIRE_NAMES[key]
        raise BadFrame(f"{symbol}: {name} is {excerpt(value)}, not a finite number", kind=f"bad {name}")
    return value  # type: ignore[no-any-return]


def _count(item: Mapping[str, Any], key: str, symbol: str) -> int | None:
    value = _number(item, key, symbol)
    if value is None or (type(value) is int and value >= 0):
        return value
    if not 0 <= value < VOLUME_LIMIT or (isinstance(value, float) and not value.is_integer()):
        name = WIRE_NAMES[key]
        raise BadFrame(f"{symbol}: {name} is {value!r}, not a share count", kind=f"bad {name}")
    return int(value)
