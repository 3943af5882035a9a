"""Stand-ins for `cloud-init` and `curl` (on the box: /healthz; here: checkip for --ssh-cidr my-ip).

`cloud-init status --wait` answers per fault
`cloud_init` (error, running = never finishes). `curl` answers /healthz from the container's state
(fault `health`), with the token expiry read from the token file in the container's directory, or
fails to connect (exit 7, code 000) when no container runs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import state as st

STATES = {  # fault -> (HTTP status, state)
    None: (200, "streaming"),
    "unhealthy": (503, "sink_down"),
    "waiting_for_open": (200, "waiting_for_open"),
    "reauth": (503, "reauth_needed"),
}


def main(tool: str, argv: list[str]) -> None:
    st.record(tool, argv)
    if tool == "cloud-init":
        cloud_init(argv)
    elif tool == "curl":
        curl(argv)
    else:
        st.fail(f"stub box: unknown tool {tool}", 127)


def cloud_init(argv: list[str]) -> None:
    fault = st.read()["faults"].get("cloud_init")
    if argv[:1] != ["status"]:
        st.fail(f"stub cloud-init: unsupported {argv}", 2)
    if fault == "running":
        if "--wait" in argv:
            time.sleep(3600)
        print("status: running")
    elif fault == "error":
        print("status: error")
        sys.exit(1)
    else:
        print("status: done")


def curl(argv: list[str]) -> None:
    url = argv[-1]
    if os.environ.get("STUB_SIDE") != "box":
        if url == "https://checkip.amazonaws.com":
            print("192.0.2.44")
            return
        st.fail(f"curl: (6) Could not resolve host: {url} (stub: no network here)", 6)
    if url != "http://127.0.0.1:8787/healthz":
        st.fail(f"curl: (7) Failed to connect to {url}", 7)
    with st.changing() as state:
        state["box"]["health_probes"] += 1
        container, probes, fault = (
            state["box"]["container"],
            state["box"]["health_probes"],
            state["faults"].get("health"),
        )
    if container is None or container["stopped"] or fault == "crash":
        sys.stdout.write("\n000" if "-w" in argv else "")
        sys.exit(7)
    code, service_state = STATES[fault]
    if fault is None and probes == 1:
        service_state = "reconnecting"  # the first answer after a start: not subscribed yet
    body = {
        "state": service_state,
        "ok": code == 200,
        "stale": False,
        "version": "0.1.0",
        "tickers": {"QQQ": {"last_data_age_s": 0.4}},
        "spool": {"depth": 0, "oldest_age_s": None, "dropped": 0},
        "sink": {
            "name": "supabase",
            "failing_for_s": 400.0 if fault == "unhealthy" else None,
            "last_error": "Connection refused" if fault == "unhealthy" else None,
        },
        "token": token(Path(container["dir"]) / "data/schwab_token.json"),
        "stream": {"connects": 1, "bad_frames": 0, "internal_errors": 0},
    }
    sys.stdout.write(json.dumps(body) + ("\n" + str(code) if "-w" in argv else ""))


def token(path: Path) -> dict[str, object] | None:
    try:
        created = float(json.loads(path.read_text())["creation_timestamp"])
    except (OSError, ValueError, KeyError):
        return None
    expires = created + 7 * 86400
    iso = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(expires))
    return {"refresh_expires_at": iso, "seconds_left": round(expires - time.time())}


if __name__ == "__main__":
    main(os.path.basename(sys.argv[1]), sys.argv[2:])
