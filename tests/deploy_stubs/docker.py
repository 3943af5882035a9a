"""Stand-in for `docker` (with `docker compose`), here (build, save) and on the box (load, compose, prune).

Which machine it plays is STUB_SIDE ("box" under the ssh stub). Here, `build` makes an image whose
id depends only on state["local"]["build_version"] (an unchanged tree builds the same id, as the
cache would); `save` writes that image, which the box's `load` reads back (gzip or not). On the box,
`compose up` refuses to run without docker-compose.yml, .env and the image, and (re)creates the
container when the image or .env changed. Fault `health` (unhealthy, crash, waiting_for_open, reauth)
shapes the container, its logs and /healthz.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import state as st

CONTAINER_NAME = "streaming-service-streaming-service-1"
IMAGE = "schwab-supabase-streamer:latest"
LOGS = {
    None: [
        '{"event": "health server listening", "port": 8787}',
        '{"event": "subscribed", "tickers": ["QQQ"]}',
    ],
    "unhealthy": [
        '{"event": "write failed, retrying", "level": "warning", "error": "Connection refused"}',
        '{"event": "write failed, retrying", "level": "warning", "error": "Connection refused"}',
    ],
    "crash": ["config error: STREAM_TICKER='Q Q' is invalid: one ticker or a comma list"],
    "waiting_for_open": ['{"event": "market closed; waiting for the open", "opens_at": "09:30 ET"}'],
    "reauth": ['{"event": "Schwab login expired; waiting for a new token file", "level": "error"}'],
}


def main(argv: list[str]) -> None:
    st.record("docker", argv)
    if os.environ.get("STUB_SIDE") == "box":
        box(argv)
    else:
        local(argv)


def image_id(version: str) -> str:
    return "sha256:" + hashlib.sha256(f"image {version}".encode()).hexdigest()


# --- this machine -------------------------------------------------------------------------------------
def local(argv: list[str]) -> None:
    with st.changing() as state:
        here = state["local"]
        match argv:
            case ["version", "--format", "{{.Server.Arch}}"]:
                print(here["arch"])
            case ["build", *args]:
                if state["faults"].get("build") == "error":
                    st.fail('ERROR: failed to solve: process "/bin/sh -c pip install" did not complete', 1)
                tag = args[args.index("-t") + 1]
                if args[-1] != "." or not Path("Dockerfile").is_file():
                    st.fail("ERROR: failed to read dockerfile: open Dockerfile: no such file or directory", 1)
                here["images"][tag] = image_id(here["build_version"])
                here["builds"] += 1
                print(f"Successfully tagged {tag}")
            case ["image", "inspect", "--format", "{{.Id}}", tag]:
                if tag not in here["images"]:
                    st.fail(f"Error: No such image: {tag}", 1)
                print(here["images"][tag])
            case ["save", tag]:
                if tag not in here["images"]:
                    st.fail(f"Error response from daemon: reference does not exist: {tag}", 1)
                payload = json.dumps({"tag": tag, "id": here["images"][tag]}).encode()
                sys.stdout.buffer.write(payload + b"\0" * 4096)
            case _:
                st.fail(f"stub docker (here): unsupported {argv}", 1)


# --- the box --------------------------------------------------------------------------------------
def box(argv: list[str]) -> None:
    if argv == ["load"]:
        data = sys.stdin.buffer.read()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        image = json.loads(data.rstrip(b"\0"))
    with st.changing() as state:
        b = state["box"]
        fault = state["faults"].get("health")
        match argv:
            case ["info", *_]:
                print("Server Version: 26.1.3")
            case ["compose", "version", *_]:
                print("Docker Compose version 2.24.6+ds1-0ubuntu2")
            case ["load"]:
                for other in b["images"]:
                    if image["tag"] in other["tags"]:
                        other["tags"].remove(image["tag"])  # the old image is left dangling
                same = [i for i in b["images"] if i["id"] == image["id"]]
                if same:
                    same[0]["tags"].append(image["tag"])
                else:
                    b["images"].append({"id": image["id"], "tags": [image["tag"]]})
                b["loads"] += 1
                print(f"Loaded image: {image['tag']}")
            case ["image", "inspect", "--format", "{{.Id}}", tag]:
                found = [i["id"] for i in b["images"] if tag in i["tags"]]
                if not found:
                    st.fail(f"Error: No such image: {tag}", 1)
                print(found[0])
            case ["image", "prune", "-f"]:
                used = b["container"]["image_id"] if b["container"] else None
                b["images"] = [i for i in b["images"] if i["tags"] or i["id"] == used]
                print("Total reclaimed space: 118MB")
            case ["inspect", "--format", fmt, container_id]:
                c = b["container"]
                if c is None or c["id"] != container_id or ".State.Status" not in fmt:
                    st.fail(f"Error: No such object: {container_id}", 1)
                status, restarts, health = container_state(c, fault)
                print(f"{status} {restarts} {health}")
            case ["compose", *args]:
                compose(b, args, fault)
            case _:
                st.fail(f"stub docker (box): unsupported {argv}", 1)


def container_state(container: dict[str, Any], fault: str | None) -> tuple[str, int, str]:
    if container["stopped"]:
        return "exited", 0, "unhealthy"
    if fault == "crash":
        return "restarting", 5, "starting"
    return "running", 0, "unhealthy" if fault in ("unhealthy", "reauth") else "healthy"


def compose(b: dict[str, Any], args: list[str], fault: str | None) -> None:
    here = Path.cwd()
    if not (here / "docker-compose.yml").is_file():
        st.fail("no configuration file provided: not found", 14)
    c = b["container"]
    match args:
        case ["up", "-d", *options]:
            if not (here / ".env").is_file():
                st.fail(
                    f"env file {here / '.env'} not found: stat {here / '.env'}: no such file or directory", 1
                )
            tagged = [i["id"] for i in b["images"] if IMAGE in i["tags"]]
            if not tagged:
                st.fail(f"Error response from daemon: No such image: {IMAGE}", 1)
            env_hash = hashlib.sha256((here / ".env").read_bytes()).hexdigest()
            if c is None or c["image_id"] != tagged[0] or c["env_hash"] != env_hash or c["stopped"]:
                b["created"] += 1
                b["health_probes"] = 0
                b["container"] = {
                    "id": f"{b['created']:064x}",
                    "image_id": tagged[0],
                    "env_hash": env_hash,
                    "dir": str(here),
                    "options": options,
                    "stopped": False,
                    "restarted": 0,
                }
                print(f" Container {CONTAINER_NAME}  Started", file=sys.stderr)
            else:
                print(f" Container {CONTAINER_NAME}  Running", file=sys.stderr)
        case ["ps", "-a", "-q", _]:
            if c is not None:
                print(c["id"])
        case ["ps", *_]:
            print("NAME   IMAGE   SERVICE   STATUS")
            if c is not None:
                status, _, health = container_state(c, fault)
                print(f"{CONTAINER_NAME}   {IMAGE}   streaming-service   {status} ({health})")
        case ["logs", *options]:
            if c is not None:
                for line in LOGS.get(fault, LOGS[None]):
                    print(f"streaming-service-1  | {line}")
        case ["exec", "-T", "streaming-service", "streaming-service", "status"]:
            if c is None or container_state(c, fault)[0] != "running":
                st.fail('service "streaming-service" is not running', 1)
            code, state = (503, "sink_down") if fault == "unhealthy" else (200, "streaming")
            print(f"state: {state} ({'OK' if code == 200 else 'NOT OK'}), version 0.1.0")
            print("  QQQ: last data 0.4 s ago")
            print("spool: 0 rows waiting; 0 dropped")
            if code != 200:
                st.fail("unhealthy (HTTP 503)", 1)
        case ["restart", *_]:
            if c is not None:
                c["restarted"] += 1
                b["health_probes"] = 0
        case ["stop", *_]:
            if c is not None:
                c["stopped"] = True
        case ["down", *_]:
            b["container"] = None
            print(f" Container {CONTAINER_NAME}  Removed", file=sys.stderr)
        case _:
            st.fail(f"stub docker compose: unsupported {args}", 1)


if __name__ == "__main__":
    main(sys.argv[2:])
