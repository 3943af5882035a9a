"""CPU per LEVELONE frame from the socket to a row, ours against stock schwab-py's own dispatch.

Usage: python bench/wire.py [--quick] [--frames N]
A sender process serves pre-built frames (streaming_service.simulator.recording: equities with
partial updates, and option frames quoting 80 contracts each) over a real loopback WebSocket; this
process times itself (`time.process_time`, so the sender's CPU is not counted) over N frames for:
  orjson decode       orjson.loads of each frame, no socket
  stdlib json decode  json.loads of each frame, no socket
  websockets recv     the legacy websockets client schwab-py uses, recv() only
  stock schwab-py     StreamClient.handle_message with a no-op handler (json, deepcopy, relabel)
  ours, wire to row   SchwabStream's read loop → decoder → QuoteMerger → Pipeline →
                      Batcher.add into an in-memory spool (options: → OptionsTracker.on_item)
Each figure (the least of `--repeat` runs: CPU time still grows when other processes share the
cores) is printed in µs per frame beside its baseline (the same bench before the wire work,
commit a43f1b2) and as a ratio to stock schwab-py measured in the same run. The target: ours ≤
0.75x stock schwab-py, for both feeds.
`run(quick)` returns the table's rows (for `python -m bench`); `main()` prints them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import multiprocessing
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson
import websockets.exceptions
from websockets.asyncio.server import ServerConnection, serve

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from memory_sink import MemorySink  # noqa: E402

from streaming_service.batcher import Batcher  # noqa: E402
from streaming_service.config import Settings  # noqa: E402
from streaming_service.pipeline import Pipeline  # noqa: E402
from streaming_service.simulator.recording import Recording, equity_frames, option_frames  # noqa: E402
from streaming_service.sources import quiet_library_warnings  # noqa: E402
from streaming_service.sources.options import OptionsTracker  # noqa: E402
from streaming_service.sources.schwab import SchwabStream  # noqa: E402

with quiet_library_warnings():
    import websockets.legacy.client as ws_client
    from schwab.streaming import StreamClient

TARGET = 0.75
FEEDS = ("equities", "options")
PATHS = ("orjson decode", "stdlib json decode", "websockets recv", "stock schwab-py", "ours, wire to row")
#: µs per frame before the wire work: the data path of commit a43f1b2 under this bench (200k equity
#: and 10k option frames, least of 3, plain frames), on the 2-vCPU dev box. Same-run ratios are what
#: compare; absolute figures move with the machine and its load.
BASELINE: dict[tuple[str, str], float] = {
    ("equities", "orjson decode"): 1.02,
    ("equities", "stdlib json decode"): 3.85,
    ("equities", "websockets recv"): 10.84,
    ("equities", "stock schwab-py"): 32.34,
    ("equities", "ours, wire to row"): 82.28,
    ("options", "orjson decode"): 45.10,
    ("options", "stdlib json decode"): 184.08,
    ("options", "websockets recv"): 16.67,
    ("options", "stock schwab-py"): 1103.14,
    ("options", "ours, wire to row"): 1854.76,
}
DEFAULTS = {name: field.default for name, field in Settings.model_fields.items()}


# --- the sender process -------------------------------------------------------------------------------


def _serve(frames: dict[str, list[str]], pipe: Connection, deflate: bool) -> None:
    """Sender process: on each connection, read the feed's name, send its frames, close.
    `deflate`: accept permessage-deflate (the client offers it, as schwab-py's does)."""

    async def handler(socket: ServerConnection) -> None:
        feed = str(await socket.recv())
        with contextlib.suppress(websockets.exceptions.ConnectionClosed):
            for frame in frames[feed]:
                await socket.send(frame)
            await socket.close()

    async def main() -> None:
        async with serve(
            handler, "127.0.0.1", 0, max_queue=None, compression="deflate" if deflate else None
        ) as server:
            pipe.send(next(iter(server.sockets)).getsockname()[1])
            await asyncio.get_running_loop().run_in_executor(None, pipe.recv)  # until told to stop

    asyncio.run(main())


# --- the receiving paths ------------------------------------------------------------------------------


async def _connect(port: int, feed: str) -> Any:
    socket = await ws_client.connect(f"ws://127.0.0.1:{port}/ws")  # as schwab-py connects
    await socket.send(feed)
    return socket


def _timed(body: Callable[[], None]) -> float:
    gc.collect()
    start = time.process_time()
    body()
    return time.process_time() - start


async def _atimed(body: Callable[[], Any]) -> float:
    gc.collect()
    start = time.process_time()
    await body()
    return time.process_time() - start


def _decode_all(loads: Callable[[str], Any], frames: list[str]) -> None:
    for frame in frames:  # nothing kept: 200k live dicts would make the GC the figure
        loads(frame)


async def _recv(port: int, feed: str, count: int) -> float:
    socket = await _connect(port, feed)

    async def body() -> None:
        for _ in range(count):
            await socket.recv()

    try:
        return await _atimed(body)
    finally:
        await socket.close()


async def _stock(port: int, feed: str, count: int) -> float:
    stream = StreamClient(None)
    stream.add_level_one_equity_handler(lambda message: None)
    stream.add_level_one_option_handler(lambda message: None)
    stream._socket = await _connect(port, feed)

    async def body() -> None:
        for _ in range(count):
            await stream.handle_message()

    try:
        return await _atimed(body)
    finally:
        await stream._socket.close()


async def _ours(port: int, feed: str, recording: Recording) -> float:
    """The production read loop, fed until the sender closes; rows go to an in-memory spool."""
    batcher = Batcher(MemorySink(), size=DEFAULTS["batch_size"], interval=DEFAULTS["batch_interval"])
    pipeline = Pipeline(("QQQ",), batcher.add, resolution_s=DEFAULTS["row_resolution"])
    tracker = OptionsTracker(
        None,
        ("QQQ",),
        batcher.add_options,
        expirations=2,
        strikes=20,
        interval_s=DEFAULTS["options_interval"],
    )
    tracker.quotes.set_contracts(recording.contracts)

    def on_tick(tick: Any) -> None:
        pipeline.on_tick(tick)
        tracker.on_tick(tick)

    stream = SchwabStream(
        None, ("QQQ",), on_tick, on_option=tracker.on_item, now=lambda: recording.now_s, stale_after_s=3600
    )
    connection = stream._connection()
    connection._socket = await _connect(port, feed)
    loop = asyncio.get_running_loop()
    stream._data_at = loop.time()

    async def body() -> None:
        with contextlib.suppress(websockets.exceptions.ConnectionClosed):
            await stream._read(connection, loop)

    elapsed = await _atimed(body)
    problems = (stream.stats.bad_frames, stream.stats.internal_errors)
    if problems != (0, 0) or stream.stats.frames != len(recording.frames):
        raise RuntimeError(f"our path refused frames: {stream.stats}")
    if feed == "equities" and pipeline.ticks == 0:
        raise RuntimeError("our path made no trade")
    return elapsed


async def _measure(port: int, feed: str, recording: Recording, repeat: int) -> dict[str, float]:
    """µs per frame of each path: the least of `repeat` runs (the one least disturbed by others)."""
    frames, count = recording.frames, len(recording.frames)
    best: dict[str, float] = {}
    for _ in range(repeat):
        seconds = {
            "orjson decode": _timed(lambda: _decode_all(orjson.loads, frames)),
            "stdlib json decode": _timed(lambda: _decode_all(json.loads, frames)),
            "websockets recv": await _recv(port, feed, count),
            "stock schwab-py": await _stock(port, feed, count),
            "ours, wire to row": await _ours(port, feed, recording),
        }
        for path, s in seconds.items():
            best[path] = min(best.get(path, s), s)
    return {path: s / count * 1e6 for path, s in best.items()}


def run(
    quick: bool = False, frames: int | None = None, repeat: int | None = None, deflate: bool = False
) -> list[dict[str, Any]]:
    """Measure every path for both feeds; one row per (feed, path): `feed`, `path`, `frames`,
    `us_per_frame`, `baseline_us` (None if not recorded), `ratio_to_schwab_py`, and for our
    path `target` and `meets_target`. `frames`: equity frames (option frames: a twentieth);
    `repeat`: runs per path, the least counts (default 1 quick, else 3); `deflate`: the sender
    compresses (permessage-deflate; whether Schwab does is not known, so off by default)."""
    repeat = repeat or (1 if quick else 3)
    equities = frames or (2_000 if quick else 200_000)
    recordings = {
        "equities": equity_frames(equities),
        "options": option_frames(max(equities // 20, 100)),
    }
    context = multiprocessing.get_context("fork")  # the child shares the frames, built once
    parent, child = context.Pipe()
    sender = context.Process(
        target=_serve, args=({f: r.frames for f, r in recordings.items()}, child, deflate), daemon=True
    )
    sender.start()
    try:
        port = parent.recv()
        rows = []
        for feed, recording in recordings.items():
            figures = asyncio.run(_measure(port, feed, recording, repeat))
            stock = figures["stock schwab-py"]
            for path, us in figures.items():
                row: dict[str, Any] = {
                    "feed": feed,
                    "path": path,
                    "frames": len(recording.frames),
                    "us_per_frame": round(us, 2),
                    "baseline_us": BASELINE.get((feed, path)),
                    "ratio_to_schwab_py": round(us / stock, 3),
                }
                if path == "ours, wire to row":
                    row |= {"target": TARGET, "meets_target": us / stock <= TARGET}
                rows.append(row)
        return rows
    finally:
        parent.send("stop")
        sender.join(timeout=10)
        if sender.is_alive():
            sender.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 equity frames (CI)")
    parser.add_argument("--frames", type=int, help="equity frames (default 200,000; options: a twentieth)")
    parser.add_argument("--repeat", type=int, help="runs per path, the least counts (default 3; quick 1)")
    parser.add_argument("--deflate", action="store_true", help="the sender compresses (permessage-deflate)")
    args = parser.parse_args()
    rows = run(args.quick, args.frames, args.repeat, args.deflate)
    print(f"{'feed':<9} {'path':<20} {'frames':>8} {'µs/frame':>9} {'baseline':>9} {'x schwab-py':>12}")
    for row in rows:
        baseline = row["baseline_us"]
        mark = ""
        if "target" in row:
            mark = f"  target ≤{row['target']}x: {'met' if row['meets_target'] else 'NOT met'}"
        print(
            f"{row['feed']:<9} {row['path']:<20} {row['frames']:>8,} {row['us_per_frame']:>9.2f} "
            f"{'-' if baseline is None else f'{baseline:.2f}':>9} {row['ratio_to_schwab_py']:>11.2f}x{mark}"
        )


if __name__ == "__main__":
    main()
