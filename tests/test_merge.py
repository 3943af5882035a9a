"""Partial LEVELONE_EQUITIES updates merge per symbol; trades are rises of cumulative volume; every
item is validated before it changes anything (prices, counts, trade times, volume jumps, days)."""

from __future__ import annotations

import json
import math
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from harness import running_service
from polling import wait_until

from streaming_service.simulator import SchwabSimulator, SimulatedMarket
from streaming_service.sources.merge import WIRE_NAMES
from streaming_service.sources.schwab import BadFrame, QuoteMerger

T0 = 1_764_000_000_000  # epoch ms: 2025-11-24 11:00 New York
DAY_MS = 86_400_000


class Clock:
    """An injectable wall clock (epoch seconds) that tests move by hand."""

    def __init__(self, ms: int = T0 + 60_000) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000


KEYS = {name: key for key, name in WIRE_NAMES.items()}


def wire(item: dict[str, Any]) -> dict[str, Any]:
    """`item` with schwab-py's field names written as the wire keys the merger reads."""
    return {KEYS.get(name, name): value for name, value in item.items()}


def snap(**fields: Any) -> dict[str, Any]:
    return wire({"key": "QQQ", "delayed": False, **fields})


def merger(clock: Clock | None = None, **options: Any) -> QuoteMerger:
    return QuoteMerger(now=clock or Clock(), **options)


def started(price: float = 500.0, volume: int = 1_000, **options: Any) -> QuoteMerger:
    """A merger whose QQQ baseline is `volume` at `price`."""
    m = merger(**options)
    assert m.apply(snap(LAST_PRICE=price, TOTAL_VOLUME=volume, TRADE_TIME_MILLIS=T0)) is None
    return m


def volume_after(m: QuoteMerger, total: int) -> int | None:
    """The volume of the trade a rise to `total` reports (proves what the baseline was)."""
    tick = m.apply(snap(TOTAL_VOLUME=total))
    return None if tick is None else tick.volume


# --- merging ----------------------------------------------------------------------------------------


def test_first_snapshot_sets_the_baseline_only() -> None:
    first = snap(LAST_PRICE=500.0, TOTAL_VOLUME=1_000, LAST_SIZE=100, TRADE_TIME_MILLIS=T0)
    assert merger().apply(first) is None


def test_volume_delta_is_the_trade_and_partial_fields_are_merged() -> None:
    m = started()
    tick = m.apply(snap(TOTAL_VOLUME=1_300, TRADE_TIME_MILLIS=T0 + 5))  # price unchanged, not resent
    assert tick is not None
    assert (tick.symbol, tick.price, tick.volume) == ("QQQ", 500.0, 300)
    assert tick.timestamp == datetime.fromtimestamp((T0 + 5) / 1000, UTC)
    tick = m.apply(snap(LAST_PRICE=500.5, TOTAL_VOLUME=1_350))  # time unchanged, not resent
    assert tick is not None
    assert (tick.price, tick.volume) == (500.5, 50)
    assert tick.timestamp == datetime.fromtimestamp((T0 + 5) / 1000, UTC)


def test_quote_only_update_is_not_a_trade() -> None:
    m = started()
    assert m.apply(snap(BID_PRICE=499.9, ASK_PRICE=500.1, QUOTE_TIME_MILLIS=T0 + 9)) is None
    assert m.apply(snap(TOTAL_VOLUME=1_000)) is None  # unchanged volume: no trade


def test_dropped_frame_folds_its_volume_into_the_next_trade() -> None:
    sent = [
        snap(LAST_PRICE=500.0, TOTAL_VOLUME=0, TRADE_TIME_MILLIS=T0),
        snap(LAST_PRICE=500.1, TOTAL_VOLUME=100, TRADE_TIME_MILLIS=T0 + 1),
        snap(LAST_PRICE=500.2, TOTAL_VOLUME=350, TRADE_TIME_MILLIS=T0 + 2),  # dropped
        snap(LAST_PRICE=500.3, TOTAL_VOLUME=400, TRADE_TIME_MILLIS=T0 + 3),
    ]
    m = merger()
    ticks = [m.apply(frame) for i, frame in enumerate(sent) if i != 2]
    volumes = [t.volume for t in ticks if t is not None]
    assert volumes == [100, 300]
    assert sum(volumes) == 400  # nothing lost


def test_symbols_are_merged_independently() -> None:
    m = merger()
    m.apply(wire({"key": "QQQ", "LAST_PRICE": 500.0, "TOTAL_VOLUME": 10, "TRADE_TIME_MILLIS": T0}))
    m.apply(wire({"key": "SPY", "LAST_PRICE": 600.0, "TOTAL_VOLUME": 20, "TRADE_TIME_MILLIS": T0}))
    tick = m.apply(wire({"key": "SPY", "TOTAL_VOLUME": 25}))
    assert tick is not None and (tick.symbol, tick.price, tick.volume) == ("SPY", 600.0, 5)


# --- validation: every refused item changes nothing --------------------------------------------------


@pytest.mark.parametrize(
    ("item", "kind"),
    [
        ({"LAST_PRICE": 500.0}, "bad symbol"),
        (snap(key=None), "bad symbol"),
        (snap(key="SPY"), "unsubscribed symbol"),
        (snap(LAST_PRICE=math.nan), "bad LAST_PRICE"),
        (snap(LAST_PRICE=-1.0), "bad LAST_PRICE"),
        (snap(LAST_PRICE=0), "bad LAST_PRICE"),
        (snap(LAST_PRICE=1e8), "bad LAST_PRICE"),  # beyond DECIMAL(10,2)
        (snap(LAST_PRICE=1e300), "bad LAST_PRICE"),
        (snap(LAST_PRICE="500"), "bad LAST_PRICE"),
        (snap(LAST_PRICE=None), "bad LAST_PRICE"),
        (snap(LAST_PRICE=True), "bad LAST_PRICE"),
        (snap(TOTAL_VOLUME=-5), "bad TOTAL_VOLUME"),
        (snap(TOTAL_VOLUME=1_050.5), "bad TOTAL_VOLUME"),
        (snap(TOTAL_VOLUME=math.inf), "bad TOTAL_VOLUME"),
        (snap(TOTAL_VOLUME=2**63), "bad TOTAL_VOLUME"),  # beyond BIGINT
        (snap(TOTAL_VOLUME=1e19), "bad TOTAL_VOLUME"),
        (snap(TOTAL_VOLUME=10**400), "bad TOTAL_VOLUME"),  # json.loads makes such ints
        (snap(TOTAL_VOLUME=[1_100]), "bad TOTAL_VOLUME"),
        (snap(LAST_SIZE=-1), "bad LAST_SIZE"),
        (snap(TRADE_TIME_MILLIS=True), "bad TRADE_TIME_MILLIS"),
        (snap(TRADE_TIME_MILLIS=0), "bad trade time"),
        (snap(TRADE_TIME_MILLIS=1e300), "trade time in the future"),  # was an OverflowError
        (snap(TRADE_TIME_MILLIS=4_102_444_800_000), "trade time in the future"),  # year 2100
        (snap(TRADE_TIME_MILLIS=T0 + 60_000 + 5_001), "trade time in the future"),
        (snap(TRADE_TIME_MILLIS=T0 - DAY_MS), "trade time of another day"),
        (snap(TRADE_TIME_MILLIS=1), "trade time of another day"),
    ],
)
def test_bad_items_raise_and_merge_nothing(item: dict[str, Any], kind: str) -> None:
    m = started(symbols=("QQQ",))
    refused_item = {**item, "8": item.get("8", 1_100)} if "key" in item else wire(item)
    with pytest.raises(BadFrame) as refused:
        m.apply(refused_item)
    assert refused.value.kind == kind
    assert len(str(refused.value)) <= 200
    ours = refused_item.get("key") == "QQQ"
    forgot_price, forgot_time = ours and "3" in refused_item, ours and "35" in refused_item
    if forgot_price:  # the stream will not send that price again: the next trade must bring one
        with pytest.raises(BadFrame, match="accepted LAST_PRICE"):
            m.apply(snap(TOTAL_VOLUME=1_150), frame_time_ms=T0 + 9)
    price = 501.0 if forgot_price else 500.0
    tick = m.apply(snap(LAST_PRICE=price, TOTAL_VOLUME=1_150) if forgot_price else snap(TOTAL_VOLUME=1_150),
                   frame_time_ms=T0 + 9)  # fmt: skip
    assert tick is not None and (tick.price, tick.volume) == (price, 150)  # the baseline kept
    known_time = T0 + 9 if forgot_time else T0  # a trade time it carried is forgotten, else kept
    assert tick.timestamp == datetime.fromtimestamp(known_time / 1000, UTC)


def test_limits_themselves_are_accepted() -> None:
    m = merger()
    m.apply(snap(LAST_PRICE=99_999_999.99, TOTAL_VOLUME=2**63 - 2, TRADE_TIME_MILLIS=T0 + 60_000 + 5_000))
    tick = m.apply(snap(TOTAL_VOLUME=2**63 - 1))
    assert tick is not None and (tick.price, tick.volume) == (99_999_999.99, 1)


def test_a_trade_time_checks_against_the_injected_clock() -> None:
    clock = Clock()
    m = merger(clock)
    late = snap(LAST_PRICE=500.0, TOTAL_VOLUME=1_000, TRADE_TIME_MILLIS=T0 + 3_600_000)
    with pytest.raises(BadFrame, match="future"):
        m.apply(late)
    clock.ms = T0 + 3_600_000  # an hour later the same item is fine
    assert m.apply(late) is None


def test_a_frame_timestamp_stands_in_for_a_missing_trade_time_and_is_checked_too() -> None:
    m = merger()
    m.apply(snap(LAST_PRICE=500.0, TOTAL_VOLUME=1_000))  # no trade time known yet
    with pytest.raises(BadFrame, match="frame timestamp"):
        m.apply(snap(TOTAL_VOLUME=1_100), frame_time_ms=1e300)
    tick = m.apply(snap(TOTAL_VOLUME=1_100), frame_time_ms=T0 + 7)
    assert tick is not None and tick.volume == 100 and tick.timestamp.timestamp() * 1000 == T0 + 7


# --- volume jumps and falls ----------------------------------------------------------------------------


def test_a_1e12_share_jump_is_a_bad_frame_not_a_trade() -> None:
    m = started(volume=1_000)
    with pytest.raises(BadFrame) as refused:
        m.apply(snap(TOTAL_VOLUME=1_000_000_000_000))
    assert refused.value.kind == "volume jump"
    assert volume_after(m, 1_200) == 200  # the baseline is still 1,000


@pytest.mark.parametrize(
    ("baseline", "total", "jump", "accepted"),
    [
        (0, 10_000_000, 10.0, True),  # first trades of the day: the floor (1e6 shares) applies
        (100, 5_000_000, 10.0, True),
        (0, 10_000_001, 10.0, False),
        (50_000_000, 550_000_000, 10.0, True),  # 10 x the day's volume so far
        (50_000_000, 550_000_001, 10.0, False),
        (50_000_000, 150_000_001, 2.0, False),  # max_volume_jump is a setting
    ],
)
def test_the_jump_limit_is_a_multiple_of_the_days_volume_with_a_floor(
    baseline: int, total: int, jump: float, accepted: bool
) -> None:
    m = started(volume=baseline, max_volume_jump=jump)
    if accepted:
        assert volume_after(m, total) == total - baseline
    else:
        with pytest.raises(BadFrame, match="TOTAL_VOLUME went from"):
            m.apply(snap(TOTAL_VOLUME=total))


def test_a_replayed_old_frame_is_refused_so_no_share_is_counted_twice() -> None:
    m = started(volume=1_000)
    assert volume_after(m, 2_000) == 1_000
    with pytest.raises(BadFrame) as refused:
        m.apply(snap(LAST_PRICE=500.0, TOTAL_VOLUME=1_500, TRADE_TIME_MILLIS=T0))  # an old frame again
    assert refused.value.kind == "volume fall"
    tick = m.apply(snap(LAST_PRICE=500.5, TOTAL_VOLUME=2_500), frame_time_ms=T0 + 5)  # (a new price and time:
    # those the refused frame carried are forgotten)
    assert tick is not None and tick.volume == 500  # not 1,000: the fall did not become the baseline


def test_a_fall_that_stays_resets_the_baseline_without_counting_anything() -> None:
    m = started(volume=5_000_000)
    for total in (100, 150):  # two agreeing values are still refused...
        with pytest.raises(BadFrame, match="TOTAL_VOLUME went from"):
            m.apply(snap(TOTAL_VOLUME=total))
    assert m.apply(snap(TOTAL_VOLUME=180)) is None  # ...the third confirms: new baseline, no trade
    assert volume_after(m, 200) == 20


def test_a_jump_that_stays_after_an_outage_becomes_the_baseline() -> None:
    m = started(volume=1_000)
    with pytest.raises(BadFrame):
        m.apply(snap(TOTAL_VOLUME=50_000_000))
    assert volume_after(m, 1_100) == 100  # back at the real level: the suspicion is dropped...
    for total in (50_000_000, 50_000_100):
        with pytest.raises(BadFrame):
            m.apply(snap(TOTAL_VOLUME=total))  # ...so it takes three in a row again
    assert m.apply(snap(TOTAL_VOLUME=50_000_300)) is None
    assert volume_after(m, 50_000_400) == 100


# --- trading days --------------------------------------------------------------------------------------


def test_a_new_exchange_date_resets_the_baseline_so_the_first_snapshot_is_no_trade() -> None:
    clock = Clock()
    m = merger(clock)
    m.apply(snap(LAST_PRICE=500.0, TOTAL_VOLUME=9_000_000, TRADE_TIME_MILLIS=T0))
    clock.ms += DAY_MS  # next morning, same process
    # this morning's first snapshot: more than yesterday's total, yet not a trade
    assert m.apply(snap(LAST_PRICE=501.0, TOTAL_VOLUME=12_000_000, TRADE_TIME_MILLIS=T0 + DAY_MS)) is None
    tick = m.apply(snap(TOTAL_VOLUME=12_000_060, TRADE_TIME_MILLIS=T0 + DAY_MS + 1))
    assert tick is not None and (tick.volume, tick.price) == (60, 501.0)


def test_a_new_day_starting_from_zero_counts_from_its_own_baseline() -> None:
    clock = Clock()
    m = merger(clock)
    m.apply(snap(LAST_PRICE=500.0, TOTAL_VOLUME=9_000_000, TRADE_TIME_MILLIS=T0))
    clock.ms += DAY_MS
    assert m.apply(snap(TOTAL_VOLUME=200, TRADE_TIME_MILLIS=T0 + DAY_MS)) is None  # a fall, but a new day
    tick = m.apply(snap(TOTAL_VOLUME=260))
    assert tick is not None and tick.volume == 60
    assert tick.price == 500.0  # yesterday's last price is still the last price
    assert tick.timestamp == datetime.fromtimestamp((T0 + DAY_MS) / 1000, UTC)  # not yesterday's time


def test_yesterdays_trade_time_is_refused_after_the_date_changes() -> None:
    clock = Clock()
    m = merger(clock)
    m.apply(snap(LAST_PRICE=500.0, TOTAL_VOLUME=9_000_000, TRADE_TIME_MILLIS=T0))
    clock.ms += DAY_MS
    with pytest.raises(BadFrame) as refused:
        m.apply(snap(TOTAL_VOLUME=9_000_100, TRADE_TIME_MILLIS=T0 + 5))
    assert refused.value.kind == "trade time of another day"


# --- after a refused item --------------------------------------------------------------------------


def test_a_refused_item_forgets_the_price_and_time_it_carried() -> None:
    """The stream will not send again what the refused item carried: the next trade is priced and
    timed only with values accepted after it (its shares wait for a price; nothing is lost)."""
    m = started(price=500.0, volume=1_000)
    with pytest.raises(BadFrame):  # valid price and time, invalid size: refused whole
        m.apply(snap(LAST_PRICE=501.0, TOTAL_VOLUME=1_100, LAST_SIZE=-1, TRADE_TIME_MILLIS=T0 + 10))
    with pytest.raises(BadFrame) as waiting:  # a trade at 501.0, which we never accepted
        m.apply(snap(TOTAL_VOLUME=1_300), frame_time_ms=T0 + 20)
    assert waiting.value.kind == "trade without a price"
    tick = m.apply(snap(LAST_PRICE=502.0, TOTAL_VOLUME=1_400), frame_time_ms=T0 + 30)
    assert tick is not None and (tick.price, tick.volume) == (502.0, 400)
    assert tick.timestamp == datetime.fromtimestamp((T0 + 30) / 1000, UTC)  # not the forgotten T0


def test_a_refused_item_without_a_price_leaves_the_price_known() -> None:
    m = started(price=500.0, volume=1_000)
    with pytest.raises(BadFrame):  # a volume jump: the stream's price did not change
        m.apply(snap(TOTAL_VOLUME=1_000 + 50_000_000))
    tick = m.apply(snap(TOTAL_VOLUME=1_100))
    assert tick is not None and (tick.price, tick.volume) == (500.0, 100)


async def test_no_row_takes_the_price_a_refused_item_replaced(tmp_path: Path) -> None:
    """Over the real WebSocket: an item with a new price and a bad field is refused; the next trade
    comes without a price (the stream sent it already). Its row must not carry the old price."""
    url = f"sqlite:///{tmp_path / 'record.db'}"
    market = SimulatedMarket(["QQQ"], seed=5, trades_per_second=3.0, session_seconds=3_600.0)
    async with (
        SchwabSimulator(market, speed=10.0, heartbeat_seconds=0.2) as sim,
        running_service(sim, tmp_path, database_url=url, options_enabled=False) as service,
    ):
        await wait_until(lambda: service.pipeline.ticks >= 5)
        sim.pause()
        merger = service.stream.merger
        await wait_until(lambda: merger.state("QQQ")["total_volume"] == market.total_volume("QQQ"))  # type: ignore[index]
        old_price, total = merger.state("QQQ")["last_price"], market.total_volume("QQQ")  # type: ignore[index]
        new_price, later_price = round(old_price + 1.23, 2), round(old_price + 1.5, 2)
        at = int(sim.clock() * 1000)
        items = [
            {"key": "QQQ", "3": new_price, "8": total + 100, "9": -5, "35": at},  # refused: LAST_SIZE
            {"key": "QQQ", "8": total + 300, "35": at + 1},  # a trade at new_price
            {"key": "QQQ", "3": later_price, "8": total + 400, "35": at + 2},
        ]
        for item in items:
            frame = {"service": "LEVELONE_EQUITIES", "timestamp": at, "command": "SUBS", "content": [item]}
            await sim.send_raw(json.dumps({"data": [frame]}))
        await wait_until(lambda: merger.state("QQQ")["total_volume"] == total + 400)  # type: ignore[index]
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        rows = conn.execute("SELECT timestamp, price, volume FROM equity_data").fetchall()
    stamped = [(int(datetime.fromisoformat(t).timestamp() * 1000), p, volume) for t, p, volume in rows]
    after = [(ms - at, price, volume) for ms, price, volume in stamped if ms >= at]
    print(f"rows after the refused item (ms after it, price, volume): {after}; old price {old_price}")
    assert after == [(2, later_price, 400)]  # the 300 shares waited for a price that was accepted


# --- Schwab's morning reset -----------------------------------------------------------------------------

MORNING = T0 - 4 * 3_600_000 + 28 * 60_000  # 07:28 New York, the day of T0


def test_the_morning_reset_of_total_volume_is_a_new_baseline_not_a_refused_fall() -> None:
    """Streaming overnight, the date's first TOTAL_VOLUME is still yesterday's total; Schwab resets
    it before the open. That first fall is the new baseline at once: the trades after it count."""
    clock = Clock(MORNING - 3 * 3_600_000)  # 04:28: the pre-market
    m = merger(clock)
    m.apply(snap(LAST_PRICE=500.0, TOTAL_VOLUME=41_000_000, TRADE_TIME_MILLIS=clock.ms - 1))  # yesterday's
    clock.ms = MORNING
    assert m.apply(snap(TOTAL_VOLUME=0, TRADE_TIME_MILLIS=MORNING - 1)) is None  # the reset
    counted = [m.apply(snap(TOTAL_VOLUME=v, TRADE_TIME_MILLIS=MORNING + v)) for v in (100, 250, 400)]
    assert [t.volume if t else None for t in counted] == [100, 150, 150]
    with pytest.raises(BadFrame, match="went from 400 to 50"):  # one reset a day: a second fall is refused
        m.apply(snap(TOTAL_VOLUME=50))


def test_after_the_open_a_fall_is_refused_as_before() -> None:
    m = started(volume=41_000_000)  # 11:00
    with pytest.raises(BadFrame) as refused:
        m.apply(snap(TOTAL_VOLUME=0))
    assert refused.value.kind == "volume fall"
