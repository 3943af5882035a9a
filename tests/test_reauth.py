"""The token file is followed: an expired Schwab login leaves the service up in `reauth_needed`
(asking Schwab nothing, keeping its spool) until a new token file appears, and a login renewed
before expiry replaces the client at once, before its next refresh could write the old one back."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from harness import serving
from memory_sink import MemorySink
from polling import wait_until

from streaming_service.config import load_settings
from streaming_service.service import Service
from streaming_service.simulator import SchwabSimulator, SimulatedMarket, write_token_file
from streaming_service.sources.schwab_client import build_schwab_client


def token_posts(sim: SchwabSimulator) -> int:
    return sum(1 for method, path in sim.rest_requests if method == "POST" and path == "/v1/oauth/token")


def new_login(path: Path, access_token: str) -> None:
    """What `streaming-service auth` leaves: a token file from a later login."""
    old = json.loads(path.read_text())["creation_timestamp"]
    write_token_file(path)
    data = json.loads(path.read_text())
    data["creation_timestamp"] = old + 60
    data["token"]["access_token"] = access_token
    path.write_text(json.dumps(data))


def login_tokens(sim: SchwabSimulator) -> list[str]:
    """The access token of every stream LOGIN, in order."""
    return [p.get("Authorization", "") for s, c, p in sim.stream_requests if (s, c) == ("ADMIN", "LOGIN")]


@asynccontextmanager
async def service_following(sim: SchwabSimulator, tmp_path: Path) -> AsyncIterator[Service]:
    token = tmp_path / "token.json"

    def new_client() -> object:
        return build_schwab_client(token, "key", "secret", api_base_url=sim.api_base_url)

    settings = load_settings(
        stream_ticker="QQQ", options_enabled=True, batch_interval=0.2, row_resolution=0,
        spool_path=tmp_path / "spool.db", health_port=0,
    )  # fmt: skip
    service = Service(
        settings, new_client(), MemorySink(), new_client=new_client, token_path=token, token_poll_s=0.05
    )
    async with serving(service):
        yield service


async def test_expired_refresh_token_waits_for_a_new_token_file_then_streams_again(tmp_path: Path) -> None:
    market = SimulatedMarket(["QQQ"], seed=4, trades_per_second=2.0, session_seconds=3600.0)
    async with SchwabSimulator(market, speed=10, heartbeat_seconds=0.2) as sim:
        write_token_file(tmp_path / "token.json", expires_in_s=1)  # the access token needs a refresh...
        sim.refresh_token_valid = False  # ...and Schwab refuses the refresh token: 7 days are over
        async with service_following(sim, tmp_path) as service:
            await wait_until(lambda: service.state() == "reauth_needed", within=20)
            code, body = service.health()
            assert (code, body["state"]) == (503, "reauth_needed")
            posts, checks = token_posts(sim), service.token_checks
            await wait_until(lambda: service.token_checks > checks + 20)  # twenty looks at the file
            assert token_posts(sim) == posts  # nobody asks Schwab while waiting for a person

            sim.refresh_token_valid = True
            new_login(tmp_path / "token.json", "after-auth")
            await wait_until(lambda: service.state() == "streaming", within=20)
            ticks = service.pipeline.ticks
            await wait_until(lambda: service.pipeline.ticks > ticks + 5, within=20)
        assert login_tokens(sim)[-1] == "after-auth"
    print(f"reauth: {posts} token request(s) before waiting, none in {service.token_checks} looks at "
          f"the file; streaming again with {service.stream.stats.connects} connect(s)")  # fmt: skip


async def test_a_login_renewed_before_expiry_is_used_from_the_next_connection(tmp_path: Path) -> None:
    market = SimulatedMarket(["QQQ"], seed=5, trades_per_second=2.0, session_seconds=3600.0)
    async with SchwabSimulator(market, speed=10, heartbeat_seconds=0.2) as sim:
        write_token_file(tmp_path / "token.json")
        async with service_following(sim, tmp_path) as service:
            await wait_until(lambda: service.state() == "streaming")
            new_login(tmp_path / "token.json", "renewed")
            checks = service.token_checks
            await wait_until(lambda: service.token_checks > checks + 2)
            await sim.disconnect_all()
            await wait_until(lambda: len(login_tokens(sim)) == 2 and service.state() == "streaming")
    assert login_tokens(sim) == ["sim-access", "renewed"]
