"""Options: choose the contract window from the chain, merge LEVELONE_OPTIONS quotes, snapshot rows.

Window: for each underlying, the next `expirations` expirations (0DTE included when listed) and
`strikes` strikes each side of the underlying's price (strikes below it, then at or above it),
calls and puts. It is chosen again ("rolled") when the price moves more than one strike step from
the window's centre or an expiration in it has passed; the stream then ADDs the new contracts and
UNSUBS the ones that left, on the same connection.

Quotes: the stream sends a full item per contract first, then only changed fields, read with
Schwab's numeric wire keys (`OPTION_KEYS`: wire key → schwab-py's name, which messages use). The
chain is the authority on a contract's strike, type and expiration; the stream's copies (strike in
field 20, which schwab-py labels STRIKE_TYPE; type in 21; expiration in 12/23/26) must agree. The first
item of a contract must carry its strike and type. An item with a wrong or missing identity, a
non-numeric, non-finite or out-of-range number, or a negative size is skipped whole (`BadFrame`).
Schwab's -999 for a greek or the volatility means "not computed" and becomes NULL.

Days: a quote belongs to the exchange date (America/New_York) on which it was received, by the
exchange clock. When the date changes, every contract's quote is forgotten (its identity, checked
on its first item, is kept), so a snapshot holds only fields received on its own date: yesterday's
last bid, greeks or volume are never written as today's. A contract that gets no item today has no
row today; one that gets only some fields today has only those (the stream sends a field again only
when it changes, so a field unchanged since yesterday stays NULL until it changes or the
connection is made again, when every contract's full item comes).

Snapshots: every `interval_s` seconds of market time (the underlying's trade times), one
`OptionRow` per contract with a quote of that day, stamped with the interval's start; contracts
never quoted that day or already expired are skipped. Prices and greeks are rounded to 4
decimals, the strike to 2; implied volatility is stored as a fraction (the stream's 25.3 % becomes
0.2530).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import structlog
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

from streaming_service.indicators import exchange_day
from streaming_service.models import OptionContract, OptionRow, Tick
from streaming_service.sources import quiet_library_warnings
from streaming_service.sources.clock import exchange_clock
from streaming_service.sources.frames import BadFrame
from streaming_service.sources.schwab_client import raise_for_auth_status, schwab_errors

with quiet_library_warnings():
    from schwab.streaming import StreamClient

__all__ = ["OPTION_FIELDS", "OPTION_KEYS", "BadOptionItem", "OptionQuotes", "OptionsTracker", "select_window"]

log = structlog.get_logger(__name__)
NEW_YORK = ZoneInfo("America/New_York")

_F = StreamClient.LevelOneOptionFields
#: The minimal LEVELONE_OPTIONS field set.
OPTION_FIELDS = [
    _F.SYMBOL, _F.BID_PRICE, _F.ASK_PRICE, _F.LAST_PRICE, _F.TOTAL_VOLUME, _F.OPEN_INTEREST,
    _F.VOLATILITY, _F.EXPIRATION_YEAR, _F.STRIKE_TYPE, _F.CONTRACT_TYPE, _F.EXPIRATION_MONTH,
    _F.EXPIRATION_DAY, _F.DELTA, _F.GAMMA, _F.THETA, _F.VEGA,
]  # fmt: skip
#: LEVELONE_OPTIONS wire key → schwab-py's name (LevelOneOptionFields; tests/test_wire_parity.py)
OPTION_KEYS = {
    "2": "BID_PRICE", "3": "ASK_PRICE", "4": "LAST_PRICE", "8": "TOTAL_VOLUME", "9": "OPEN_INTEREST",
    "10": "VOLATILITY", "12": "EXPIRATION_YEAR", "20": "STRIKE_TYPE", "21": "CONTRACT_TYPE",
    "23": "EXPIRATION_MONTH", "26": "EXPIRATION_DAY", "28": "DELTA", "29": "GAMMA", "30": "THETA",
    "31": "VEGA",
}  # fmt: skip
_STRIKE, _TYPE = "20", "21"
_YEAR, _MONTH, _DAY = "12", "23", "26"
_PRICES = ("2", "3", "4")  # BID_PRICE, ASK_PRICE, LAST_PRICE
_GREEKS = ("28", "29", "30", "31")  # DELTA, GAMMA, THETA, VEGA
_VALUES = (*_PRICES, *_GREEKS, "10")  # ... and VOLATILITY
_SIZES = ("8", "9")  # TOTAL_VOLUME, OPEN_INTEREST
_VALUE_FIELDS = tuple((key, OPTION_KEYS[key], key in _PRICES) for key in _VALUES)  # (key, name, price?)
_MISSING: Any = object()
_DECIMAL_10_4_LIMIT = 1e6  # option_prices' DECIMAL(10, 4) columns hold less than this
_NOT_AVAILABLE = -999.0  # Schwab's value for a greek or volatility it could not compute: stored as NULL


class BadOptionItem(BadFrame):
    """An option item that cannot be used; it is skipped whole (a bad frame)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="bad option item")


@dataclass(frozen=True, slots=True)
class Window:
    """The contracts chosen for one underlying, and what they were chosen around."""

    contracts: dict[str, OptionContract]
    centre: float
    step: float

    def stale(self, price: float, today: date) -> bool:
        """True when the window should be chosen again (see the module docstring)."""
        expired = any(c.expiration < today for c in self.contracts.values())
        return expired or abs(price - self.centre) > self.step


def select_window(chain: Mapping[str, Any], price: float, *, expirations: int, strikes: int) -> Window:
    """Choose the window from a `/marketdata/v1/chains` body; `price` is the underlying's price.

    Raises `ValueError` if the chain has no usable contract."""
    by_expiration: dict[date, dict[float, list[OptionContract]]] = {}
    underlying = str(chain.get("symbol", ""))
    for side, kind in (("callExpDateMap", "CALL"), ("putExpDateMap", "PUT")):
        for exp_key, by_strike in (chain.get(side) or {}).items():
            expiration = date.fromisoformat(str(exp_key).split(":")[0])
            for strike_key, entries in by_strike.items():
                for entry in entries:
                    symbol, strike = entry.get("symbol"), float(entry.get("strikePrice", strike_key))
                    if isinstance(symbol, str) and math.isfinite(strike) and strike > 0:
                        contract = OptionContract(symbol, underlying, kind, strike, expiration)  # type: ignore[arg-type]
                        by_expiration.setdefault(expiration, {}).setdefault(strike, []).append(contract)
    chosen: dict[str, OptionContract] = {}
    for expiration in sorted(by_expiration)[:expirations]:
        listed = sorted(by_expiration[expiration])
        below = [k for k in listed if k < price][-strikes:]
        above = [k for k in listed if k >= price][:strikes]
        for strike in below + above:
            chosen.update((c.symbol, c) for c in by_expiration[expiration][strike])
    if not chosen:
        raise ValueError(f"the option chain of {underlying or '?'} lists no contract")
    all_strikes = sorted({c.strike for c in chosen.values()})
    gaps = [b - a for a, b in itertools.pairwise(all_strikes) if b > a]
    return Window(chosen, price, min(gaps) if gaps else max(price * 0.01, 0.01))


class OptionQuotes:
    """Merged stream state per contract of the current windows, for the current exchange date.
    See the module docstring. `now`: the exchange clock (epoch seconds) that dates each item."""

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self.contracts: dict[str, OptionContract] = {}
        self._now = now
        self._identified: set[str] = set()  # contracts whose first item carried their identity
        self._state: dict[str, dict[str, Any]] = {}  # quote fields received on the current date
        self._day = (0.0, 0.0)  # [start, end) of the date the quotes belong to, epoch ms

    def set_contracts(self, contracts: Mapping[str, OptionContract]) -> None:
        """Track exactly `contracts`; quotes of contracts that left are forgotten."""
        self.contracts = dict(contracts)
        self._state = {s: v for s, v in self._state.items() if s in self.contracts}
        self._identified &= self.contracts.keys()

    def apply(self, item: Mapping[str, Any]) -> None:
        """Merge one item (wire keys); items of untracked contracts are ignored. Raises `BadOptionItem`.

        The state keeps schwab-py's names (`OPTION_KEYS`)."""
        symbol = item.get("key")
        contract = self.contracts.get(symbol) if isinstance(symbol, str) else None
        if contract is None:
            return
        now_ms = self._now() * 1000
        if not self._day[0] <= now_ms < self._day[1]:
            self._start_day(now_ms)
        if contract.symbol not in self._identified and (_STRIKE not in item or _TYPE not in item):
            raise BadOptionItem(
                f"{contract.symbol}: first item lacks the strike (20) or type (21): {dict(item)}"
            )
        _check_identity(contract, item)
        update: dict[str, float | None] = {}
        for key, name, price in _VALUE_FIELDS:
            value = item.get(key, _MISSING)
            if value is _MISSING:
                continue
            if type(value) is not float or value - value != 0.0:  # fast path: a finite float
                value = _number(contract, key, value)
            if price and value < 0:
                raise BadOptionItem(f"{contract.symbol}: {name} is negative ({value})")
            if not -_DECIMAL_10_4_LIMIT < value < _DECIMAL_10_4_LIMIT:
                raise BadOptionItem(f"{contract.symbol}: {name} is {value}, beyond the column's range")
            update[name] = None if value == _NOT_AVAILABLE and not price else value
        for key in _SIZES:
            value = item.get(key, _MISSING)
            if value is _MISSING:
                continue
            if type(value) is not int or value < 0:
                number = _number(contract, key, value)
                if number < 0 or number != int(number):
                    raise BadOptionItem(f"{contract.symbol}: {OPTION_KEYS[key]} is {value!r}, not a count")
                value = int(number)
            update[OPTION_KEYS[key]] = value
        self._identified.add(contract.symbol)
        state = self._state.get(contract.symbol)
        if state is None:
            self._state[contract.symbol] = update
        else:
            state.update(update)

    def snapshot(self, timestamp: datetime) -> list[OptionRow]:
        """One row per tracked contract quoted on `timestamp`'s exchange date that has not expired
        by then (the first snapshot of a day can come before the window rolls); none for a
        `timestamp` of another date than the quotes'."""
        ms = timestamp.timestamp() * 1000
        if ms >= self._day[1]:
            self._start_day(ms)  # a new date, and no quote of it yet
        if not self._day[0] <= ms < self._day[1]:
            return []
        today = timestamp.astimezone(NEW_YORK).date()
        return [
            _row(contract, timestamp, state)
            for symbol, state in self._state.items()
            if (contract := self.contracts[symbol]).expiration >= today
        ]

    def _start_day(self, epoch_ms: float) -> None:
        """Make the exchange date of `epoch_ms` current: the quotes of another date are forgotten."""
        start, end = exchange_day(int(epoch_ms))
        self._day = (float(start), float(end))
        self._state.clear()


def _check_identity(contract: OptionContract, item: Mapping[str, Any]) -> None:
    strike = item.get(_STRIKE, contract.strike)
    number = strike if type(strike) is float or type(strike) is int else None  # not bool
    if number is None or abs(number - contract.strike) > 1e-6:
        raise BadOptionItem(
            f"{contract.symbol}: strike {strike!r} does not match the chain's {contract.strike}"
        )
    kind = item.get(_TYPE, contract.option_type[0])
    if kind != contract.option_type[0]:
        raise BadOptionItem(f"{contract.symbol}: contract type {kind!r} is not {contract.option_type[0]!r}")
    expiration = contract.expiration
    for key, expected in ((_YEAR, expiration.year), (_MONTH, expiration.month), (_DAY, expiration.day)):
        value = item.get(key, expected)
        if value != expected:
            raise BadOptionItem(
                f"{contract.symbol}: {OPTION_KEYS[key]} {value!r} does not match {expiration}"
            )


def _number(contract: OptionContract, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadOptionItem(f"{contract.symbol}: {OPTION_KEYS[key]} is {value!r}, not a finite number")
    return float(value)


def _row(contract: OptionContract, timestamp: datetime, state: Mapping[str, Any]) -> OptionRow:
    def r4(name: str, divisor: float = 1.0) -> float | None:
        value = state.get(name)  # divided, not multiplied by 0.01: 20.625 * 0.01 is 0.20625000000000002
        return None if value is None else round(value / divisor, 4)

    return OptionRow(
        ticker=contract.underlying,
        timestamp=timestamp,
        option_type=contract.option_type,
        strike_price=round(contract.strike, 2),
        expiration_date=contract.expiration,
        last_price=r4("LAST_PRICE"),
        bid=r4("BID_PRICE"),
        ask=r4("ASK_PRICE"),
        volume=state.get("TOTAL_VOLUME"),
        open_interest=state.get("OPEN_INTEREST"),
        implied_volatility=r4("VOLATILITY", 100),  # Schwab sends percent
        delta=r4("DELTA"),
        gamma=r4("GAMMA"),
        theta=r4("THETA"),
        vega=r4("VEGA"),
        option_symbol=contract.symbol,
    )


Subscriber = Callable[[set[str]], Awaitable[None]]


class OptionsTracker:
    """Keeps each underlying's window current, feeds quotes in, and emits snapshots.

    Call `on_tick` with every equity trade (cheap, synchronous) and `on_item` with every option
    item; run `run(subscribe)` as a task: it queries the chain (`client`: schwab-py AsyncClient)
    when a window must be chosen and calls `subscribe(symbols)` with the full set of contracts.
    Chain requests that fail for a network reason, a 5xx, 408 or 429 are retried; an expired or
    refused token raises `AuthError` out of `run` (`schwab_client.schwab_errors`). `now`: the
    exchange clock (default: `clock.exchange_clock`, read at construction).
    """

    def __init__(
        self,
        client: Any,
        underlyings: tuple[str, ...],
        emit: Callable[[list[OptionRow]], None],
        *,
        expirations: int,
        strikes: int,
        interval_s: int,
        max_backoff_s: float = 60.0,
        now: Callable[[], float] | None = None,
    ) -> None:
        self._client = client
        self._now = now or exchange_clock.get()
        self._underlyings = underlyings
        self._emit = emit
        self._expirations, self._strikes = expirations, strikes
        self._interval_ms = interval_s * 1000
        self._max_backoff_s = max_backoff_s
        self.quotes = OptionQuotes(self._now)
        self.windows: dict[str, Window] = {}
        self._prices: dict[str, float] = {}
        self._today: date | None = None
        self._bucket: int | None = None
        self._roll = asyncio.Event()
        self._roll.set()  # choose the first windows at once
        self._disabled: set[str] = set()
        self.snapshots = 0
        self.rows = 0

    def use_client(self, client: Any) -> None:
        """Use `client` (e.g. built from a new token file) for the next chain requests."""
        self._client = client

    def on_tick(self, tick: Tick) -> None:
        """Advance the market clock; at each new interval emit a snapshot and check the windows."""
        self._prices[tick.symbol] = tick.price
        ms = int(tick.timestamp.timestamp() * 1000)
        bucket = ms - ms % self._interval_ms
        if self._bucket is not None and bucket <= self._bucket:
            return
        self._bucket = bucket
        today = tick.timestamp.astimezone(NEW_YORK).date()
        if self._today is not None and today != self._today:
            self._disabled.clear()  # a new trading day: ask again for tickers that had no options
        self._today = today
        rows = self.quotes.snapshot(datetime.fromtimestamp(bucket / 1000, UTC))
        if rows:
            self.snapshots += 1
            self.rows += len(rows)
            self._emit(rows)
        if any(self._stale(u) for u in self._underlyings):
            self._roll.set()

    def on_item(self, item: Mapping[str, Any]) -> None:
        """Merge one option item, keyed as on the wire (raises `BadOptionItem`)."""
        self.quotes.apply(item)

    async def run(self, subscribe: Subscriber) -> None:
        """Choose windows whenever needed, forever; chain errors are logged and retried.

        Raises `AuthError` when Schwab refuses the token (e.g. the refresh token expired)."""
        while True:
            await self._roll.wait()
            self._roll.clear()
            for underlying in self._underlyings:
                if underlying not in self._disabled and self._stale(underlying):
                    await self._choose(underlying)
            contracts = {s: c for w in self.windows.values() for s, c in w.contracts.items()}
            self.quotes.set_contracts(contracts)
            await subscribe(set(contracts))

    def _stale(self, underlying: str) -> bool:
        window = self.windows.get(underlying)
        if window is None:
            return underlying not in self._disabled
        price = self._prices.get(underlying, window.centre)
        return window.stale(price, self._exchange_date())

    def _exchange_date(self) -> date:
        """The date of the last trade, else of the exchange clock."""
        return self._today or datetime.fromtimestamp(self._now(), NEW_YORK).date()

    async def _choose(self, underlying: str) -> None:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type((httpx.HTTPError, _ChainUnavailable)),
            wait=wait_exponential_jitter(max=self._max_backoff_s),
            before_sleep=lambda state: log.warning(
                "option chain request failed, retrying",
                underlying=underlying,
                error=str(state.outcome.exception() if state.outcome else ""),
            ),
        )
        try:
            async for attempt in retrying:
                with attempt:
                    window = await self._query(underlying)
        except _NoOptions as exc:
            self._disabled.add(underlying)
            self.windows.pop(underlying, None)
            log.error(
                "no options recorded for this ticker",
                underlying=underlying,
                reason=str(exc),
                fix="asked again next trading day; OPTIONS_ENABLED=false turns options off",
            )
            return
        previous = self.windows.get(underlying)
        self.windows[underlying] = window
        log.info(
            "option window chosen",
            underlying=underlying,
            contracts=len(window.contracts),
            centre=window.centre,
            expirations=",".join(sorted({str(c.expiration) for c in window.contracts.values()})),
            rolled=previous is not None,
        )

    async def _query(self, underlying: str) -> Window:
        today = self._exchange_date()
        with schwab_errors("the option expiration chain request"):
            listed = _json(await self._client.get_option_expiration_chain(underlying), underlying)
        upcoming = sorted(
            {
                d
                for e in listed.get("expirationList") or []
                if (d := _date(e.get("expirationDate"))) and d >= today
            }
        )[: self._expirations]
        if not upcoming:
            raise _NoOptions(f"no expiration on or after {today}")
        with schwab_errors("the option chain request"):
            response = await self._client.get_option_chain(
                underlying,
                contract_type="ALL",
                strike_count=2 * self._strikes + 2,
                from_date=upcoming[0],
                to_date=upcoming[-1],
            )
        chain = _json(response, underlying)
        price = self._prices.get(underlying) or float(chain.get("underlyingPrice") or 0)
        if price <= 0:
            raise _ChainUnavailable(f"{underlying}: no price to centre the window on")
        try:
            return select_window(chain, price, expirations=self._expirations, strikes=self._strikes)
        except (ValueError, TypeError, AttributeError) as exc:
            raise _NoOptions(str(exc)) from None


_TRANSIENT_STATUS = frozenset({408, 429})  # timeout, rate limit: ask again later


class _ChainUnavailable(Exception):
    """The chain could not be read this time; try again later."""


class _NoOptions(Exception):
    """The underlying has no usable options; stop asking until the next trading day."""


def _json(response: httpx.Response, underlying: str) -> dict[str, Any]:
    raise_for_auth_status(response, f"the option chain request for {underlying}")
    if response.status_code >= 500 or response.status_code in _TRANSIENT_STATUS:
        raise _ChainUnavailable(f"{underlying}: HTTP {response.status_code}")
    if response.status_code != 200:
        raise _NoOptions(f"HTTP {response.status_code}: {response.text[:200]}")
    try:
        body = response.json()
    except ValueError:
        raise _ChainUnavailable(f"{underlying}: the chain is not JSON") from None
    if not isinstance(body, dict):
        raise _ChainUnavailable(f"{underlying}: unexpected chain body")
    return body


def _date(value: Any) -> date | None:
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        return None
