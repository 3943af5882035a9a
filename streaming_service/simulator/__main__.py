"""Run the simulator on its own: `python -m streaming_service.simulator --port 8765 --symbols QQQ`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from pathlib import Path

from streaming_service.simulator import SchwabSimulator, SimulatedMarket, write_token_file


async def _serve(args: argparse.Namespace) -> None:
    market = SimulatedMarket(args.symbols.upper().split(","), seed=args.seed, trades_per_second=args.rate)
    async with SchwabSimulator(market, port=args.port, speed=args.speed) as sim:
        write_token_file(args.token)
        print(f"REST     {sim.api_base_url}\nstreamer {sim.streamer_url}\ntoken    {args.token}", flush=True)
        await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m streaming_service.simulator")
    parser.add_argument("--port", type=int, default=8765, help="REST port (default %(default)s)")
    parser.add_argument("--symbols", default="QQQ", help="comma-separated (default %(default)s)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--speed", type=float, default=1.0, help="simulated seconds per real second")
    parser.add_argument("--rate", type=float, default=2.0, help="trades per simulated second")
    parser.add_argument("--token", type=Path, default=Path("data/sim_token.json"), help="token file to write")
    args = parser.parse_args()
    if args.speed <= 0 or args.rate <= 0:
        parser.error("--speed and --rate must be greater than 0")
    args.token.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
