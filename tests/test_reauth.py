"""An expired Schwab login: the service stays up in `reauth_needed`, does not hammer Schwab, keeps
its spool, and streams again by itself when a new token file appears."""

from __future__ import annotations

import asyncio
from pathlib import Path

from memory_sink import MemorySink
from polling import wait_until

from streaming_service.config import load_settings
from streaming_service.service import Service
from streaming_service.simulator import SchwabSimulator, SimulatedMarket, write_token_file
from streaming_service.sources.schwab_client import build_schwab_client
from streaming_service.token import TokenWatcher


def token_posts(sim: SchwabSimulator) -> int:
    return sum(1 for method, path in sim.rest_requests if method == "POST" and path == "/v1/oauth/token")


async def test_expired_refresh_token_waits_for_a_new_token_file_then_streams_again(tmp_path: Path) -> None:
    market = SimulatedMarket(["QQQ"], seed=4, trades_per_second=2.0, session_seconds=3600.0)
    async with SchwabSimulator(market, speed=10, heartbeat_seconds=0.2) as sim:
        token = tmp_path / "token.json"
        write_token_file(token, expires_in_s=1)  # the access token must be refreshed at once...
        sim.refresh_token_valid = False  # ...and Schwab refuses the refresh token: 7 days are over

        def new_client() -> object:
            return build_schwab_client(token, "key", "secret", api_base_url=sim.api_base_url)

        watcher, looks = TokenWatcher(token), 0

        def token_changed() -> bool:
            nonlocal looks
            looks += 1
            return watcher.changed()

        settings = load_settings(
            stream_ticker="QQQ", options_enabled=True, batch_interval=0.2, row_resolution=0,
            spool_path=tmp_path / "spool.db", health_port=0,
        )  # fmt: skip
        service = Service(
            settings, new_client(), MemorySink(), new_client=new_client,
            token_changed=token_changed, token_poll_s=0.05,
        )  # fmt: skip
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        await wait_until(lambda: service.state() == "reauth_needed", within=20)
        code, body = service.health()
        assert (code, body["state"]) == (503, "reauth_needed")
        posts, looked = token_posts(sim), looks
        await wait_until(lambda: looks > looked + 20)  # twenty looks at the token file
        assert token_posts(sim) == posts  # nobody asks Schwab while waiting for a person
        assert not task.done()

        sim.refresh_token_valid = True
        write_token_file(token)  # `streaming-service auth` wrote a new token
        await wait_until(lambda: service.state() == "streaming", within=20)
        ticks = service.pipeline.ticks
        await wait_until(lambda: service.pipeline.ticks > ticks + 5, within=20)
        stop.set()
        await asyncio.wait_for(task, timeout=30)
    print(f"reauth: {posts} token request(s) before waiting, none while waiting; "
          f"streaming again with {service.stream.stats.connects} connect(s)")  # fmt: skip
