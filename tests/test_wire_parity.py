"""Our data path skips schwab-py's deepcopy and relabelling (sources/wire.py) and reads Schwab's
numeric wire keys. Guard: the same recorded frames (equities with partial updates, and option
frames of 80 contracts), served over a real loopback WebSocket, give identical ticks and identical
option quotes through stock schwab-py (a real StreamClient, its handler path: relabelled items)
and through ours (SchwabStream's read loop). Our key tables agree with schwab-py's field enums,
and the installed schwab-py is the version range the shortcut was verified on."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping
from importlib.metadata import version
from typing import Any

import websockets.exceptions
from websockets.asyncio.server import ServerConnection, serve

from streaming_service.models import Tick
from streaming_service.simulator.recording import equity_frames, option_frames
from streaming_service.sources import quiet_library_warnings
from streaming_service.sources.merge import WIRE_NAMES, QuoteMerger
from streaming_service.sources.options import OPTION_FIELDS, OPTION_KEYS, OptionQuotes
from streaming_service.sources.schwab import EQUITY_FIELDS, SchwabStream

with quiet_library_warnings():
    import websockets.legacy.client as ws_client
    from schwab.streaming import StreamClient

Quote = tuple[str, dict[str, Any]]  # a contract, and its merged state after one item


def test_our_wire_keys_are_schwab_pys_fields() -> None:
    equities = StreamClient.LevelOneEquityFields.key_mapping()
    options = StreamClient.LevelOneOptionFields.key_mapping()
    assert {key: equities[key] for key in WIRE_NAMES} == WIRE_NAMES
    assert {key: options[key] for key in OPTION_KEYS} == OPTION_KEYS
    assert {str(f.value) for f in EQUITY_FIELDS} == {"0", *WIRE_NAMES}  # what we subscribe is what we read
    assert {str(f.value) for f in OPTION_FIELDS} == {"0", *OPTION_KEYS}


def test_schwab_py_is_the_version_the_shortcut_was_verified_on() -> None:
    assert version("schwab-py").startswith("1.5."), "check sources/wire.py against it, then widen the pin"


async def test_stock_schwab_py_and_our_path_give_identical_ticks_and_quotes() -> None:
    equities, options = equity_frames(3_000), option_frames(40)
    frames = [*equities.frames[:1_500], *options.frames, *equities.frames[1_500:]]
    now_s = max(equities.now_s, options.now_s)

    async def send_all(socket: ServerConnection) -> None:
        with contextlib.suppress(websockets.exceptions.ConnectionClosed):
            for frame in frames:
                await socket.send(frame)
            await socket.close()

    async with serve(send_all, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
        stock = await through_stock_schwab_py(url, now_s, options.contracts)
        ours = await through_our_path(url, now_s, options.contracts)

    ticks, quotes = stock
    print(f"{len(frames)} frames: {len(ticks)} ticks, {len(quotes)} option items, identical both ways")
    sent_items = sum(len(json.loads(frame)["data"][0]["content"]) for frame in options.frames)
    assert len(ticks) > 1_000 and len(quotes) == sent_items > 40 * 40
    assert ours == stock


async def through_stock_schwab_py(
    url: str, now_s: float, contracts: Mapping[str, Any]
) -> tuple[list[Tick], list[Quote]]:
    """Stock StreamClient.handle_message, handlers get relabelled items; their names are mapped
    back to wire keys with our tables (a wrong table entry then differs from the raw path)."""
    ticks: list[Tick] = []
    quotes: list[Quote] = []
    merger = QuoteMerger(symbols=("QQQ",), now=lambda: now_s)
    book = OptionQuotes()
    book.set_contracts(contracts)
    equity_keys = {name: key for key, name in WIRE_NAMES.items()}
    option_keys = {name: key for key, name in OPTION_KEYS.items()}

    def on_equities(message: dict[str, Any]) -> None:
        for item in message["content"]:
            tick = merger.apply({equity_keys.get(k, k): v for k, v in item.items()}, message["timestamp"])
            if tick is not None:
                ticks.append(tick)

    def on_options(message: dict[str, Any]) -> None:
        for item in message["content"]:
            book.apply({option_keys.get(k, k): v for k, v in item.items()})
            quotes.append((item["key"], dict(book._state[item["key"]])))

    client = StreamClient(None)
    client.add_level_one_equity_handler(on_equities)
    client.add_level_one_option_handler(on_options)
    client._socket = await ws_client.connect(url)  # what login() does, without the login
    with contextlib.suppress(websockets.exceptions.ConnectionClosed):
        while True:
            await client.handle_message()
    return ticks, quotes


async def through_our_path(
    url: str, now_s: float, contracts: Mapping[str, Any]
) -> tuple[list[Tick], list[Quote]]:
    """SchwabStream's production read loop (`WireStreamClient`, decoder, merger, option handler)."""
    quotes: list[Quote] = []
    book = OptionQuotes()
    book.set_contracts(contracts)

    def on_option(item: Mapping[str, Any]) -> None:
        book.apply(item)
        quotes.append((item["key"], dict(book._state[item["key"]])))

    ticks: list[Tick] = []
    stream = SchwabStream(None, ("QQQ",), ticks.append, on_option=on_option, now=lambda: now_s)
    connection = stream._connection()
    connection._socket = await ws_client.connect(url)
    loop = asyncio.get_running_loop()
    stream._data_at = loop.time()
    with contextlib.suppress(websockets.exceptions.ConnectionClosed):
        await stream._read(connection, loop)
    assert (stream.stats.bad_frames, stream.stats.internal_errors) == (0, 0)
    return ticks, quotes
