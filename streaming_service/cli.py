"""`streaming-service` commands: run (production), auth (Schwab login), status (/healthz for a
person), check (pre-flight), verify (the daily proof), demo (local simulator).

Exit codes: 0 done (rows not yet written wait in the spool), 1 unexpected error, a failed check or
a day whose minutes differ from price history, 2 bad configuration or argument, 3 Schwab auth
problem, 4 the database refused us (credentials, schema, dead-letter file).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import date, time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from streaming_service import __version__
from streaming_service.config import load_settings
from streaming_service.demo import DEMO_DATABASE_URL
from streaming_service.errors import AuthError, ConfigError, SinkError, StreamerError
from streaming_service.logs import configure_logging

if TYPE_CHECKING:
    from streaming_service.service import Service
    from streaming_service.sinks import Sink

__all__ = ["main"]

log = structlog.get_logger(__name__)


class ChecksFailed(StreamerError):
    """`check` found a problem (already printed)."""


EXIT_CODES: dict[type[StreamerError], int] = {
    ChecksFailed: 1, ConfigError: 2, AuthError: 3, SinkError: 4, StreamerError: 1
}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the command, map errors to a one-line message and an exit code."""
    args = _parser().parse_args(argv)
    command: Callable[[argparse.Namespace], Coroutine[None, None, None]] = args.command
    return run_command(command(args))


def run_command(command: Coroutine[None, None, None]) -> int:
    """Run `command`; map our errors to a one-line message on stderr and the exit code."""
    try:
        asyncio.run(command)
    except KeyboardInterrupt:
        return 130
    except (StreamerError, BaseExceptionGroup) as exc:
        error = _streamer_error(exc)
        if error is None:
            raise
        if str(error):  # an empty message was printed already
            print(error if isinstance(error, ConfigError) else f"error: {error}", file=sys.stderr)
        return next(code for kind, code in EXIT_CODES.items() if isinstance(error, kind))
    return 0


def _streamer_error(exc: BaseException) -> StreamerError | None:
    """The first of our own errors in `exc` (task groups wrap them), or None."""
    if isinstance(exc, StreamerError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        return next(filter(None, map(_streamer_error, exc.exceptions)), None)
    return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streaming-service",
        description="Record Schwab's live market data with SMA9/VWAP into Supabase, Postgres or SQLite.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="stream STREAM_TICKER from Schwab into the configured database")
    run.set_defaults(command=_run)

    auth = commands.add_parser(
        "auth", help="log in to Schwab (prints a URL; paste the address it redirects to) and save the token"
    )
    auth.add_argument("--status", action="store_true", help="only print when the saved refresh token expires")
    auth.set_defaults(command=_auth)

    status = commands.add_parser(
        "status", help="print the running service's /healthz for a person; exit 0 only if healthy"
    )
    status.set_defaults(command=_status)

    check = commands.add_parser(
        "check", help="check configuration, Schwab token and database; exit 0 only if all pass"
    )
    check.set_defaults(command=_check)

    verify = commands.add_parser(
        "verify",
        help="compare every minute's recorded volume with Schwab's price history, fill missing minutes, "
        "store the day's summary; exit 0 only if all match",
        description="The daily proof, per ticker of STREAM_TICKER: each minute of the regular session "
        "(from the NYSE calendar) compared with its 1-minute candle; minutes with no row at all are "
        "filled from their candle, the rest reported; the summary is stored in volume_checks. Exit 0 "
        "when every minute matches, 1 when some differ (listed), 2 for a day without a session.",
    )
    verify.add_argument(
        "--day",
        type=_day,
        metavar="YYYY-MM-DD",
        help="the session's New York date (default: the latest session closed at least a minute ago)",
    )
    verify.set_defaults(command=_verify)

    dashboard = commands.add_parser(
        "dashboard",
        help="serve the chart of the recorded data (price, SMA9, VWAP, option smile) on this machine",
        description="Serve the dashboard for the configured database (DATABASE_URL, or Supabase with "
        "SUPABASE_URL and SUPABASE_ANON_KEY) until Ctrl-C. `run` and `demo` serve the same page on "
        "HEALTH_PORT.",
    )
    dashboard.add_argument("--port", type=_port, help="TCP port (default: HEALTH_PORT, 8787 unless set)")
    dashboard.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine only)"
    )
    dashboard.add_argument(
        "--build",
        type=Path,
        metavar="DIR",
        help="instead of serving, write a static copy of the page into DIR that reads Supabase directly "
        "with SUPABASE_URL and SUPABASE_ANON_KEY, for any static host",
    )
    dashboard.set_defaults(command=_dashboard)

    demo = commands.add_parser(
        "demo",
        help="stream from a local Schwab simulator into ./data/demo.db (never to Supabase)",
        description="Run the real service against a local Schwab simulator. Reads only HEALTH_PORT, "
        "HEALTH_HOST, LOG_FORMAT and LOG_LEVEL from the environment and .env; everything else comes "
        "from these flags.",
    )
    demo.add_argument(
        "--duration",
        type=_positive(float),
        help="stop after N seconds in all, a --restart-at included (default: when the simulated session "
        "ends, or Ctrl-C)",
    )
    demo.add_argument(
        "--database-url",
        default=DEMO_DATABASE_URL,
        help="sqlite:///path.db or postgresql://… (default: %(default)s, a fresh file each run)",
    )
    demo.add_argument(
        "--keep",
        action="store_true",
        help="add to the previous run's SQLite file and spool instead of starting fresh",
    )
    demo.add_argument("--ticker", default="QQQ", help="comma-separated tickers (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=1, help="simulator random seed (default: %(default)s)")
    demo.add_argument(
        "--speed",
        type=_positive(float),
        default=60.0,
        help="simulated seconds per real second (default: %(default)s)",
    )
    demo.add_argument(
        "--rate",
        type=_positive(float),
        default=2.0,
        help="trades per simulated second per ticker (default: %(default)s)",
    )
    demo.add_argument(
        "--batch-interval",
        type=_positive(float),
        default=5.0,
        help="seconds between writes (default: %(default)s; a write also happens every 10 rows)",
    )
    demo.add_argument(
        "--status-every",
        type=_positive(float),
        default=2.0,
        help="seconds between status lines (default: %(default)s)",
    )
    demo.add_argument(
        "--restart-at",
        type=_clock_time,
        metavar="HH:MM",
        help="stop the service at this simulated New York time, let the market run --down-for "
        "simulated seconds, start it again: the gap is backfilled (see docs/continuity.md)",
    )
    demo.add_argument(
        "--down-for",
        type=_positive(float),
        default=300.0,
        help="simulated seconds the service stays down with --restart-at (default: %(default)s)",
    )
    demo.set_defaults(command=_demo)
    return parser


def _clock_time(text: str) -> time:
    """HH:MM within the regular session (09:30-16:00), for --restart-at."""
    try:
        moment = time.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time like 11:00") from None
    if not time(9, 30) < moment < time(16, 0):
        raise argparse.ArgumentTypeError(f"{text} is outside the simulated session (09:30-16:00)")
    return moment


def _day(text: str) -> date:
    """YYYY-MM-DD, for verify --day."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date; write it as YYYY-MM-DD, e.g. 2026-11-24"
        ) from None


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65_535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1 to 65535)")
    return int(text)


def _url(host: str, port: int) -> str:
    """The http:// address, from this machine, of a server listening on `host`:`port`."""
    from streaming_service.http import local_host

    address = local_host(host)
    return f"http://{f'[{address}]' if ':' in address else address}:{port}/"


async def _port_holder(host: str, port: int, *, already: bool = False) -> str:
    """Who holds `host`:`port`, for a person; for another streaming-service, where its dashboard is."""
    from streaming_service.http import port_holder

    holder = await asyncio.to_thread(port_holder, host, port)
    where = f"{'already ' if already else ''}at {_url(host, port)}"
    if holder.ours:
        return f"{holder.description}, whose dashboard is {where}"
    if holder.ours is None and already:
        return f"{holder.description}; if it is the service, its dashboard is {where}"
    return holder.description


def _other_port(port: int) -> int:
    """A port number to suggest instead of a taken `port`."""
    return port + 1 if port < 65_535 else port - 1


def _positive(kind: type[float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
        return value

    return parse


async def _run(args: argparse.Namespace) -> None:
    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    from streaming_service.market_hours import MarketCalendar, cache_path
    from streaming_service.service import Service
    from streaming_service.sinks import sink_for
    from streaming_service.sources.schwab_client import build_schwab_client

    if settings.schwab_app_key is None or settings.schwab_app_secret is None:
        raise ConfigError(
            "config error: SCHWAB_APP_KEY and SCHWAB_APP_SECRET must be set (from your app at "
            "developer.schwab.com). Set them in .env."
        )
    app_key = settings.schwab_app_key.get_secret_value()
    app_secret = settings.schwab_app_secret.get_secret_value()
    client = build_schwab_client(settings.schwab_token_path, app_key, app_secret)
    hours = None
    if not settings.skip_market_hours:
        hours = MarketCalendar(cache_path(settings.schwab_token_path))

    def new_client() -> Any:
        return build_schwab_client(settings.schwab_token_path, app_key, app_secret)

    service = Service(
        settings,
        client,
        sink_for(settings),
        market_hours=hours,
        new_client=new_client,
        token_path=settings.schwab_token_path,
    )
    await _serve(service, stop_when=None, status_every=60.0, print_status=False)


async def _auth(args: argparse.Namespace) -> None:
    import time

    from streaming_service.token import describe, login, read_token_info

    settings = load_settings()
    if args.status:
        print(describe(read_token_info(settings.schwab_token_path), time.time()))
        return
    if settings.schwab_app_key is None or settings.schwab_app_secret is None:
        raise ConfigError(
            "config error: SCHWAB_APP_KEY and SCHWAB_APP_SECRET must be set (from your app at "
            "developer.schwab.com). Set them in .env."
        )
    try:
        info = await asyncio.to_thread(
            login,
            settings.schwab_app_key.get_secret_value(),
            settings.schwab_app_secret.get_secret_value(),
            settings.schwab_redirect_uri,
            settings.schwab_token_path,
        )
    except EOFError:
        raise AuthError("no address was pasted (end of input); the token file is unchanged") from None
    print(describe(info, time.time()))


async def _status(args: argparse.Namespace) -> None:
    from streaming_service.http import NotThisService, fetch_health, format_health

    settings = load_settings()
    if not settings.health_port:
        raise ChecksFailed("HEALTH_PORT=0: the health endpoint is off; set HEALTH_PORT to use `status`")
    try:
        code, body = await asyncio.to_thread(fetch_health, settings.health_host, settings.health_port)
    except NotThisService as exc:
        raise ChecksFailed(
            f"what answers on port {settings.health_port} is not streaming-service ({exc.seen} at /healthz): "
            "another program has that port. Set HEALTH_PORT to the port the service listens on (its log "
            "line `health endpoint and dashboard listening` says which)"
        ) from None
    except OSError as exc:
        raise ChecksFailed(
            f"no answer from http://{settings.health_host}:{settings.health_port}/healthz ({exc}): "
            "is the service running (`docker compose ps`), and HEALTH_PORT the same as its own?"
        ) from None
    print(format_health(body))
    if code != 200:
        raise ChecksFailed(f"unhealthy (HTTP {code})")


async def _dashboard(args: argparse.Namespace) -> None:
    from streaming_service.dashboard.api import Dashboard, page_config, write_static_site
    from streaming_service.http import HealthServer, NotThisService, fetch_health, local_host

    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    if args.build is not None:
        config = page_config(settings, health=None)
        if config["source"] != "supabase":
            raise ConfigError(
                "config error: --build writes a page that reads Supabase directly: set SUPABASE_URL and "
                "SUPABASE_ANON_KEY (for SQLite or Postgres, run `streaming-service dashboard` instead)"
            )
        if "error" in config:
            raise ConfigError(f"config error: {config['error']}")
        try:
            files = write_static_site(args.build, config)
        except OSError as exc:
            raise ConfigError(f"--build {args.build}: cannot write there ({exc})") from None
        print(f"wrote {len(files)} files to {args.build}: publish that folder on any static host "
              "(see docs/dashboard.md)")  # fmt: skip
        return
    port = settings.health_port if args.port is None else args.port
    service = (local_host(settings.health_host), settings.health_port)

    async def service_health() -> tuple[int, dict[str, Any]]:
        """The recording service's /healthz, if one answers on HEALTH_PORT (and it is not us)."""
        where = f"{_url(*service)}healthz" if settings.health_port else "(HEALTH_PORT=0)"
        error = f"no service answers at {where}"
        if settings.health_port and service != (local_host(args.host), port):
            try:
                return await asyncio.to_thread(fetch_health, *service, 2.0)
            except NotThisService as exc:
                error = f"what answers at {where} is not streaming-service ({exc.seen})"
            except OSError:
                pass
        return 503, {"state": "not_running", "ok": False, "error": error}

    dashboard = Dashboard.for_settings(settings)
    server = HealthServer(args.host, port, service_health, pages=dashboard.answer, timeout=15)
    try:
        await server.start()
    except OSError as exc:
        await dashboard.aclose()
        if exc.errno != errno.EADDRINUSE:
            raise ConfigError(f"cannot listen on {args.host}:{port} ({exc.strerror or exc}): check --host "
                              "(an address of this machine) and --port") from None  # fmt: skip
        holder = await _port_holder(args.host, port, already=True)
        raise ConfigError(
            f"cannot listen on {args.host}:{port}: it is in use by {holder}. For another dashboard, pick "
            f"another port: --port {_other_port(port)}"
        ) from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    url = _url(args.host, server.port)
    print(f"dashboard: {url} reading {dashboard.source}; Ctrl-C stops it", flush=True)
    try:
        await stop.wait()
    finally:
        await server.aclose()
        await dashboard.aclose()


async def _check(args: argparse.Namespace) -> None:
    from streaming_service.check import CheckResult, check_database, check_schwab_app, check_token

    try:
        settings = load_settings()
    except ConfigError as exc:
        for what, fix in exc.problems or [(str(exc).removeprefix("config error: "), "")]:
            print(CheckResult("configuration", False, what, fix).line())
        raise ConfigError("") from None  # already printed, with what to change
    results = [CheckResult("configuration", True, f"tickers {','.join(settings.stream_ticker)}")]
    results.append(check_schwab_app(settings))
    results.append(check_token(settings.schwab_token_path))
    results += await check_database(settings)
    for result in results:
        print(result.line())
    failed = [r for r in results if not r.ok]
    print(f"{len(results) - len(failed)}/{len(results)} checks passed")
    if failed:
        raise ChecksFailed(f"{len(failed)} check(s) failed")


async def _verify(args: argparse.Namespace, *, api_base_url: str | None = None) -> None:
    """`verify` (see its --help); `api_base_url`: where Schwab's REST API is (tests: a simulator)."""
    from streaming_service.verify_command import verify_command

    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    differing = await verify_command(settings, args.day, api_base_url=api_base_url)
    if differing:
        raise ChecksFailed(f"minutes differ from price history for {', '.join(differing)} (listed above)")


async def _demo(args: argparse.Namespace) -> None:
    """The demo (see `demo --help`): one service, or with --restart-at two in turn, against the
    simulator until --duration seconds from now, the session's end or Ctrl-C; then the summary."""
    loop = asyncio.get_running_loop()
    started = deadline = None  # set when the simulator is up: --duration counts from there
    from streaming_service import demo

    settings = demo.demo_settings(args)
    configure_logging(settings.log_format, settings.log_level)
    from streaming_service.service import Service
    from streaming_service.simulator import SchwabSimulator, SimulatedMarket, write_token_file
    from streaming_service.sinks import sink_for
    from streaming_service.sources.schwab_client import build_schwab_client

    sink = sink_for(settings)  # a bad --database-url stops here, before anything is removed
    market = SimulatedMarket(settings.stream_ticker, seed=args.seed, trades_per_second=args.rate)
    restart_at = None if args.restart_at is None else demo.session_offset(market, args.restart_at)
    if restart_at is not None and args.duration is not None:
        demo.check_restart_fits(args, restart_at)
    if not args.keep:
        demo.start_fresh(settings)
    fresh = not args.keep and settings.sink_url.startswith("sqlite:///")
    interrupted = asyncio.Event()

    def over() -> bool:
        """Ctrl-C, or --duration passed."""
        return interrupted.is_set() or (deadline is not None and loop.time() >= deadline)

    def left() -> float | None:
        return None if deadline is None else max(0.0, deadline - loop.time())

    services: list[Service] = []
    ended_while_down = False
    async with SchwabSimulator(market, speed=args.speed) as sim:
        with tempfile.TemporaryDirectory() as tmp:
            token_path = Path(tmp) / "token.json"
            write_token_file(token_path)

            def new_service(sink: Sink) -> Service:
                client = build_schwab_client(
                    token_path, "demo-key", "demo-secret", api_base_url=sim.api_base_url
                )
                services.append(Service(settings, client, sink))
                return services[-1]

            service = new_service(sink)
            started = loop.time()
            deadline = None if args.duration is None else started + args.duration
            note = " (a fresh file: --keep adds to the previous run's)" if fresh else ""
            print(f"demo: simulator at {sim.api_base_url}, writing to {service.sink.name}{note}", flush=True)
            if restart_at is not None:
                first = service

                async def until_restart() -> None:
                    await demo.first_of(demo.market_at(sim, restart_at), interrupted.wait(), within=left())
                    if over():
                        await demo.freeze_and_catch_up(sim, first)

                await _serve(service, stop_when=until_restart, status_every=args.status_every,
                             print_status=True, first_signal=interrupted)  # fmt: skip
                if not over():
                    print(f"demo: service stopped at {args.restart_at:%H:%M} (simulated); the market goes on "
                          f"for {args.down_for:.0f} s, then it starts again", flush=True)  # fmt: skip
                    back_at = demo.market_at(sim, restart_at + args.down_for)
                    await demo.first_of(back_at, interrupted.wait(), within=left())
                    if over():
                        sim.pause()  # nothing more to record: the summary says what was missed
                        ended_while_down = True
                    else:
                        service = new_service(sink_for(settings))
            if restart_at is None or not over():
                finished = service

                async def demo_end() -> None:
                    await demo.first_of(sim.session_finished.wait(), interrupted.wait(), within=left())
                    await demo.freeze_and_catch_up(sim, finished)

                await _serve(service, stop_when=demo_end, status_every=args.status_every, print_status=True,
                             first_signal=interrupted)  # fmt: skip
    seconds = loop.time() - (started or loop.time())
    await demo.print_summary(
        args, sim, services, seconds, earlier_runs=not fresh, down_at_end=ended_while_down
    )


async def _no_health_server(host: str, port: int, error: OSError, print_status: bool) -> None:
    """Say that /healthz and the dashboard could not listen on `host`:`port`, why (who holds the port),
    and how to pick another: in the log, and with `print_status` on the terminal too."""
    if error.errno == errno.EADDRINUSE:
        why = f"port {port} of {host} is in use by {await _port_holder(host, port)}"
        other = f"HEALTH_PORT={_other_port(port)} (or another free port)"
        fix = f"set {other} in .env, or 0 for none"
        told = f"For this one's, set {other} in .env or the environment"
    else:
        why = f"cannot listen on {host}:{port}: {error.strerror or error}"
        fix = told = "set HEALTH_HOST to an address of this machine and HEALTH_PORT to a free port"
    log.error("dashboard and /healthz not started", held_by=why, fix=fix)
    if print_status:
        print(f"dashboard: not started: {why}. {told}", flush=True)


async def _serve(
    service: Service,
    *,
    stop_when: Callable[[], Awaitable[None]] | None,
    status_every: float,
    print_status: bool,
    first_signal: asyncio.Event | None = None,
) -> None:
    """Run `service` until SIGINT/SIGTERM or `stop_when()` completes; a second signal cuts the final
    writing short. With `first_signal`, the first signal only sets that event (for `stop_when` to
    finish the run its own way) and the next ones stop, then cut short. Serves /healthz and the
    dashboard (HEALTH_PORT; 0 = off) and reports status periodically."""
    from streaming_service.dashboard.api import Dashboard
    from streaming_service.http import HealthServer

    stop, force = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if first_signal is not None and not first_signal.is_set():
            first_signal.set()
        else:
            (force if stop.is_set() else stop).set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)

    async def stop_later() -> None:
        if stop_when is not None:
            await stop_when()
            stop.set()

    async def report() -> None:
        while True:
            await asyncio.sleep(status_every)
            if service.stopping:  # "stopped" is said once, at the end
                return
            status = service.status()
            service.warn_if_token_expires_soon()
            if print_status:
                print(status.line(), flush=True)
            else:
                log.info("status", **{k: getattr(status, k) for k in status.__slots__})

    settings = service.settings
    dashboard = Dashboard.for_settings(settings)
    health = HealthServer(
        settings.health_host, settings.health_port, service.health, pages=dashboard.answer, timeout=15
    )
    if settings.health_port:
        try:
            await health.start()
            url = _url(settings.health_host, health.port)
            log.info("health endpoint and dashboard listening", healthz=f"{url}healthz", dashboard=url)
            if print_status:
                print(f"dashboard: {url}", flush=True)
        except OSError as exc:  # the recorder matters more than its health page: it goes on without
            await _no_health_server(settings.health_host, settings.health_port, exc, print_status)
    try:
        async with asyncio.TaskGroup() as group:
            stopper = group.create_task(stop_later(), name="stop-timer")
            reporter = group.create_task(report(), name="status")
            await service.run(stop, force)
            stopper.cancel()
            reporter.cancel()
    finally:
        await health.aclose()
        await dashboard.aclose()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
