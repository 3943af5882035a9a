"""deploy.sh against stateful stand-ins for aws, ssh, docker and the box (tests/deploy_stubs/).

Each test runs the real script as a subprocess with the stubs first on PATH and prints what it
measured (calls made, seconds taken). Waits are shortened through deploy.sh's DEPLOY_* variables,
so every failure must end, named, within a few seconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from deploy_stubs.world import DAY, REPO, Run, World

IMAGE = "schwab-supabase-streamer:latest"
MUTATING = (
    "create-instances",
    "allocate-static-ip",
    "attach-static-ip",
    "put-instance-public-ports",
    "delete-instance",
    "release-static-ip",
    "detach-static-ip",
    "start-instance",
)
BOUND_S = 60.0  # a failure is reported, not waited out: the waits are 1-5 s (20 s seen on a loaded machine)


@pytest.fixture
def world(tmp_path: Path) -> World:
    """Nothing on AWS yet."""
    return World(tmp_path)


def deployed(world: World) -> Run:
    run = world.run("up")
    assert run.returncode == 0, run.stderr
    return run


@pytest.fixture(scope="module")
def first_deployment(tmp_path_factory: pytest.TempPathFactory) -> World:
    world = World(tmp_path_factory.mktemp("first-deployment"))
    deployed(world)
    return world


@pytest.fixture
def live(first_deployment: World, tmp_path: Path) -> World:
    """A copy of a world where `deploy.sh up` has run once: instance, static IP, image, service."""
    return World.copy_of(first_deployment, tmp_path)


def mutations(run: Run) -> list[str]:
    return [op for op in MUTATING if run.of("aws", "lightsail", op)]


def assert_fails(run: Run, *phrases: str) -> None:
    """Non-zero, within the bound, and the last line (deploy.sh: ...) names the cause."""
    assert run.returncode != 0, run.stdout
    assert run.seconds < BOUND_S, f"took {run.seconds:.1f}s"
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("deploy.sh: "), run.stderr
    for phrase in phrases:
        assert phrase in run.stderr, f"{phrase!r} not in:\n{run.stderr}"
    print(f"  message: {last}")


# --- Arguments --------------------------------------------------------------------------------------


def test_help_lists_every_subcommand_and_makes_no_call(world: World) -> None:
    run = world.run("--help")
    assert run.returncode == 0
    for sub in ("up", "status", "logs [-f]", "ssh", "restart", "down", "destroy [--yes]", "token", "tunnel"):
        assert f"\n  {sub}" in run.stdout
    assert run.calls == []


@pytest.mark.parametrize(
    "args", [("deploy",), ("--force",), ("status", "extra"), ("status", "-f"), ("up", "--ssh-cidr", "home")]
)
def test_unknown_arguments_are_an_error_naming_the_valid_ones(world: World, args: tuple[str, ...]) -> None:
    run = world.run(*args)
    assert run.returncode == 2
    assert "up status logs ssh restart down destroy token tunnel" in run.stderr
    assert run.calls == []


# --- up -----------------------------------------------------------------------------------------------


def test_first_up_creates_one_dual_stack_ubuntu_instance_with_a_static_ip_and_only_ssh_open(
    world: World,
) -> None:
    run = deployed(world)
    state = world.state

    create = run.of("aws", "lightsail", "create-instances")
    assert len(create) == 1 and state["instances_created"] == ["equity-options-streamer"]
    instance = state["instances"]["equity-options-streamer"]
    # the cheapest 512 MB bundle is IPv6-only (nano_ipv6_3_0, $3.50); the dual-stack one is chosen
    assert instance["bundle"] == "nano_3_0" and instance["ip_address_type"] == "dualstack"
    assert instance["blueprint"] == "ubuntu_24_04" and instance["zone"] == "us-east-1a"
    assert instance["user_data"] == (REPO / "infrastructure/lightsail/user-data.sh").read_text()
    assert len(run.of("aws", "lightsail", "get-bundles")) == 1

    assert state["static_ips_allocated"] == ["equity-options-streamer-ip"]
    assert len(run.of("aws", "lightsail", "attach-static-ip")) == 1
    ip = state["static_ips"]["equity-options-streamer-ip"]
    assert ip["attached_to"] == "equity-options-streamer"
    assert [(p["fromPort"], p["toPort"], p["protocol"]) for p in instance["ports"]] == [(22, 22, "tcp")]

    # readiness: bounded get-instance-state polling (there is no `aws lightsail wait`), then ssh
    assert not run.of("aws", "lightsail", "wait")
    assert len(run.of("aws", "lightsail", "get-instance-state")) >= 2
    ssh = run.of("ssh")
    assert ssh and all(c["host"] == ip["ip"] and c["user"] == "ubuntu" for c in ssh)
    for call in ssh:
        assert call["options"]["BatchMode"] == "yes"
        assert call["options"]["StrictHostKeyChecking"] == "accept-new"
        assert int(call["options"]["ConnectTimeout"]) > 0
    assert any(c["tool"] == "cloud-init" and "--wait" in c["argv"] for c in run.calls)
    assert all(c["region"] == "us-east-1" for c in run.of("aws"))

    # image built here once, shipped, loaded; nothing built on the box
    today = time.strftime("%Y-%m-%d", time.gmtime())
    builds = [c["argv"] for c in run.of("docker", "build", side="local")]
    assert builds == [["build", "--build-arg", f"CALENDAR_START={today}", "-t", IMAGE, "."]]
    assert not run.of("docker", "build", side="box")
    assert len(run.of("docker", "load", side="box")) == 1
    assert [i["tags"] for i in state["box"]["images"]] == [[IMAGE]]

    # secrets with mode 600, the compose file beside them, the service started and healthy
    assert world.mode(world.remote_dir / ".env") == 0o600
    assert world.mode(world.remote_dir / "data" / "schwab_token.json") == 0o600
    assert (world.remote_dir / ".env").read_text() == (world.project / ".env").read_text()
    assert (world.remote_dir / "docker-compose.yml").read_text() == (REPO / "docker-compose.yml").read_text()
    up = run.of("docker", "compose", "up", side="box")
    assert len(up) == 1 and "--no-build" in up[0]["argv"]
    assert run.of("docker", "image", "prune", side="box")
    assert state["box"]["container"] is not None
    assert "healthy: streaming" in run.stdout and "Schwab refresh token expires" in run.stdout
    assert not run.of("scp")


def test_second_up_only_updates_and_ships_the_image_only_when_it_changed(world: World) -> None:
    first = deployed(world)
    second = deployed(world)
    assert mutations(second) == [] and len(world.state["instances_created"]) == 1
    assert len(second.of("docker", "build", side="local")) == 1
    assert not second.of("docker", "load", side="box"), "an unchanged image is not shipped again"
    assert "image on the box is up to date" in second.stdout

    world.set("local", build_version="2")  # the code changed
    third = deployed(world)
    assert mutations(third) == []
    assert len(third.of("docker", "load", side="box")) == 1
    images = world.state["box"]["images"]
    assert len(images) == 1 and images[0]["tags"] == [IMAGE], "the old image is pruned"
    print(f"  first up {first.seconds:.2f}s, update {second.seconds:.2f}s, new image {third.seconds:.2f}s")


def test_up_converges_after_a_partial_first_run(world: World) -> None:
    world.set("faults", ssh="refused")
    assert world.run("up").returncode != 0
    world.set("faults", ssh=None)
    run = deployed(world)
    assert not run.of("aws", "lightsail", "create-instances")
    assert not run.of("aws", "lightsail", "allocate-static-ip")
    assert world.state["box"]["container"] is not None


def test_ssh_cidr_restricts_port_22_and_a_later_up_keeps_the_restriction(world: World) -> None:
    run = world.run("up", "--ssh-cidr", "my-ip")
    assert run.returncode == 0, run.stderr
    (rule,) = world.state["instances"]["equity-options-streamer"]["ports"]
    assert rule["cidrs"] == ["192.0.2.44/32"] and rule["cidrListAliases"] == ["lightsail-connect"]
    again = deployed(world)
    assert not again.of("aws", "lightsail", "put-instance-public-ports")
    assert world.state["instances"]["equity-options-streamer"]["ports"] == [rule]


def test_an_ipv6_only_bundle_is_refused_before_anything_is_created(world: World) -> None:
    run = world.run("up", "--bundle", "nano_ipv6_3_0")
    assert_fails(run, "IPv6-only", "dual-stack")
    assert mutations(run) == []


def test_a_stopped_instance_is_started_not_recreated(live: World) -> None:
    state = live.state
    state["instances"]["equity-options-streamer"]["state"] = "stopped"
    live.state_file.write_text(json.dumps(state))
    run = deployed(live)
    assert mutations(run) == ["start-instance"]


# --- read-only subcommands -------------------------------------------------------------------------


def test_status_and_logs_create_nothing(live: World) -> None:
    status = live.run("status")
    assert status.returncode == 0, status.stderr
    assert "equity-options-streamer (us-east-1): running, nano_3_0, ubuntu_24_04" in status.stdout
    assert "container  running (health: healthy, 0 restarts)" in status.stdout
    assert "healthz    HTTP 200: streaming" in status.stdout
    assert "\n           state: streaming (OK), version 0.1.0\n" in status.stdout  # the service's own words
    assert "Schwab refresh token expires" in status.stdout and "(in 5 d 23 h)" in status.stdout
    logs = live.run("logs")
    assert logs.returncode == 0 and "subscribed" in logs.stdout
    follow = live.run("logs", "-f")
    assert follow.returncode == 0 and follow.of("ssh")[-1]["command"].endswith(" -f streaming-service")
    for run in (status, logs, follow):
        assert mutations(run) == []
        assert (
            not run.of("docker", "build")
            and not run.of("docker", "load")
            and not run.of("docker", "compose", "up")
        )


def test_status_of_an_unhealthy_service_exits_non_zero(live: World) -> None:
    live.set("faults", health="unhealthy")
    run = live.run("status")
    assert run.returncode == 1
    assert "HTTP 503: sink_down" in run.stdout and "health: unhealthy" in run.stdout
    assert "state: sink_down (NOT OK)" in run.stdout and '"state": "sink_down"' not in run.stdout


def test_status_without_an_instance_says_so_and_creates_nothing(world: World) -> None:
    run = world.run("status")
    assert_fails(run, "does not exist", "./deploy.sh up")
    assert mutations(run) == [] and not run.of("ssh")


def test_ssh_runs_a_command_in_the_remote_dir_and_tunnel_forwards_the_health_port(live: World) -> None:
    run = live.run("ssh", "ls", "-a")
    assert run.returncode == 0 and ".env" in run.stdout.split()
    tunnel = live.run("tunnel", "--port", "9999")
    assert tunnel.returncode == 0
    (call,) = tunnel.of("ssh")
    assert "-N" in call["argv"] and call["options"]["-L"] == "9999:127.0.0.1:8787"
    assert "http://127.0.0.1:9999/ is the instance's dashboard" in tunnel.stdout


def test_down_stops_the_service_keeps_the_instance_and_restart_brings_it_back(live: World) -> None:
    down = live.run("down")
    assert down.returncode == 0, down.stderr
    assert live.state["box"]["container"] is None and live.state["instances"]
    assert mutations(down) == []
    restart = live.run("restart")
    assert restart.returncode == 0, restart.stderr
    assert live.state["box"]["container"] is not None and "healthy: streaming" in restart.stdout


# --- destroy ------------------------------------------------------------------------------------------


def test_destroy_yes_deletes_the_instance_and_releases_the_static_ip(live: World) -> None:
    run = live.run("destroy", "--yes")
    assert run.returncode == 0, run.stderr
    assert live.state["instances"] == {} and live.state["static_ips"] == {}
    assert len(run.of("aws", "lightsail", "delete-instance")) == 1
    assert len(run.of("aws", "lightsail", "release-static-ip")) == 1
    again = live.run("destroy", "--yes")
    assert again.returncode == 0 and "nothing to destroy" in again.stdout


def test_destroy_without_yes_and_no_answer_deletes_nothing(live: World) -> None:
    run = live.run("destroy")  # stdin is empty
    assert_fails(run, "Type the instance name to confirm", "nothing was deleted")
    assert mutations(run) == [] and live.state["instances"] and live.state["static_ips"]
    wrong = live.run("destroy", stdin="yes\n")
    assert wrong.returncode != 0 and mutations(wrong) == []
    confirmed = live.run("destroy", stdin="equity-options-streamer\n")
    assert confirmed.returncode == 0 and live.state["instances"] == {}


# --- failures: named, non-zero, bounded ------------------------------------------------------------


def test_no_credentials(world: World) -> None:
    world.set("faults", no_credentials=True)
    run = world.run("up")
    assert_fails(run, "no usable AWS credentials", "Unable to locate credentials", "aws configure")
    assert mutations(run) == [] and not run.of("docker", "build")


def test_quota_error_on_create(world: World) -> None:
    world.set("faults", create_error="quota")
    run = world.run("up")
    assert_fails(
        run,
        "creating instance equity-options-streamer in us-east-1 failed",
        "maximum number of instances",
        "account limit",
    )
    assert world.state["instances"] == {}


def test_instance_never_running(world: World) -> None:
    world.set("faults", never_running=True)
    run = world.run("up")
    assert_fails(run, "is not running after 3s", "state: pending")
    assert len(run.of("aws", "lightsail", "create-instances")) == 1


def test_ip_never_assigned(world: World) -> None:
    world.set("faults", never_ip=True)
    run = world.run("up")
    assert_fails(run, "still has public address None, not its static IP 203.0.113.")
    assert not run.of("ssh")


def test_ssh_refused(world: World) -> None:
    world.set("faults", ssh="refused")
    run = world.run("up")
    assert_fails(run, "cannot ssh to ubuntu@203.0.113.", "Connection refused", "port 22")


def test_first_boot_setup_failed_or_unfinished(world: World) -> None:
    world.set("faults", cloud_init="error")
    assert_fails(world.run("up"), "first-boot setup (cloud-init) failed", "status: error")
    world.set("faults", cloud_init="running")
    assert_fails(world.run("up"), "still running after 1s")


@pytest.mark.parametrize(
    ("fault", "phrases"),
    [
        ("unhealthy", ("not healthy after 5s", "HTTP 503 sink_down", "write failed, retrying")),
        ("crash", ("crash loop", "restarting", "config error")),
        (
            "reauth",
            ("Schwab login on the box has expired", "./deploy.sh token", "waiting for a new token file"),
        ),
    ],
)
def test_unhealthy_service_fails_with_its_last_log_lines(
    world: World, fault: str, phrases: tuple[str, ...]
) -> None:
    world.set("faults", health=fault)
    run = world.run("up")
    assert_fails(run, "the service is not healthy", "--- last log lines", *phrases)


def test_waiting_for_the_open_counts_as_healthy(world: World) -> None:
    world.set("faults", health="waiting_for_open")
    run = deployed(world)
    assert "healthy: waiting_for_open" in run.stdout


def test_missing_local_files_and_key_are_named_before_anything_is_done(world: World) -> None:
    (world.project / ".env").unlink()
    assert_fails(world.run("up"), ".env not found", "cp .env.example .env")
    (world.project / ".env").write_text("STREAM_TICKER=QQQ\n")
    key = world.home / ".ssh" / "LightsailDefaultKey-us-east-1.pem"
    key.chmod(0o644)
    assert_fails(world.run("up"), "chmod 600")
    key.unlink()
    run = world.run("up")
    assert_fails(run, "ssh key", "not found", "SSH_KEY")
    # only the read-only checks of the other prerequisites ran: AWS credentials, Docker answering
    assert len(run.of("aws", "sts", "get-caller-identity")) == len(run.of("docker", "version")) == 1
    assert len(run.calls) == 2


def path_without(world: World, *tools: str) -> str:
    """A PATH for `world.run` on which `tools` do not exist: the world's stubs but those, then links to
    every other program of this machine's PATH."""
    others = world.tmp / "other-programs"
    others.mkdir()
    for directory in map(Path, os.environ["PATH"].split(os.pathsep)):
        for program in sorted(directory.iterdir()) if directory.is_dir() else ():
            link = others / program.name
            if program.name not in tools and os.access(program, os.X_OK) and not link.exists():
                link.symlink_to(program)
    stubs = world.tmp / "stubs" / "bin"
    for tool in tools:
        (stubs / tool).unlink(missing_ok=True)
    return f"{stubs}{os.pathsep}{others}"


def test_every_missing_prerequisite_is_named_at_once(world: World) -> None:
    (world.project / ".env").unlink()
    (world.home / ".ssh" / "LightsailDefaultKey-us-east-1.pem").unlink()
    run = world.run("up", PATH=path_without(world, "aws", "docker", "ssh"))
    assert_fails(
        run,
        "5 prerequisites of './deploy.sh up' are missing",
        "  - .env not found: cp .env.example .env",
        "  - ssh key " + str(world.home / ".ssh" / "LightsailDefaultKey-us-east-1.pem") + " not found",
        "  - ssh is not installed here",
        "  - the aws CLI is not installed",
        "  - docker is not installed here",
    )
    assert run.calls == []


def test_missing_credentials_and_local_files_are_named_together(world: World) -> None:
    world.set("faults", no_credentials=True)
    (world.project / ".env").unlink()
    (world.home / ".ssh" / "LightsailDefaultKey-us-east-1.pem").chmod(0o644)
    run = world.run("status")
    assert_fails(
        run, "2 prerequisites of './deploy.sh status' are missing", "chmod 600", "no usable AWS credentials"
    )
    assert ".env" not in run.stderr  # status does not need it
    assert mutations(run) == [] and not run.of("ssh")


# --- the Schwab token ------------------------------------------------------------------------------


def test_a_newer_token_on_the_box_is_kept_and_token_forces_the_local_one(live: World) -> None:
    live.write_box_token(created=time.time() - 3600)  # re-authorised on the box since
    live.write_local_token(created=time.time() - 2 * DAY)
    run = deployed(live)
    assert live.box_token()["token"]["refresh_token"] == "box"
    assert "is not older than data/schwab_token.json" in run.stdout

    forced = live.run("token")
    assert forced.returncode == 0, forced.stderr
    assert live.box_token()["token"]["refresh_token"] == "local"
    assert live.mode(live.remote_dir / "data" / "schwab_token.json") == 0o600
    assert mutations(forced) == [] and not forced.of("docker", "build") and not forced.of("docker", "load")
    assert_restarted_around_the_copy(forced)
    assert "healthy: streaming" in forced.stdout


def test_a_newer_local_token_replaces_the_box_one(live: World) -> None:
    live.write_box_token(created=time.time() - 3 * DAY)
    live.write_local_token(created=time.time() - 60)
    run = deployed(live)
    assert live.box_token()["token"]["refresh_token"] == "local"
    assert "to copy data/schwab_token.json" in run.stdout
    assert_restarted_around_the_copy(run)


def assert_restarted_around_the_copy(run: Run) -> None:
    """A running service would write its old login back over the new file: stopped, copied, started."""
    calls = [c for c in run.calls if c["tool"] in ("ssh", "docker")]
    stop = calls.index(run.of("docker", "compose", "stop", side="box")[0])
    copy = next(i for i, c in enumerate(calls) if c["tool"] == "ssh" and ".token.new" in c["command"])
    start = calls.index(run.of("docker", "compose", "up", side="box")[-1])
    assert stop < copy < start


def test_same_token_on_both_sides_keeps_the_box_copy_with_its_refreshed_access_token(live: World) -> None:
    created = json.loads((live.project / "data" / "schwab_token.json").read_text())["creation_timestamp"]
    live.write_box_token(created=created)  # the service rewrote it with a fresh access token
    deployed(live)
    assert live.box_token()["token"]["access_token"] == "b"


# --- static checks of the scripts ------------------------------------------------------------------

SCRIPTS = [
    REPO / "deploy.sh",
    REPO / ".ci" / "run",
    *sorted((REPO / "scripts").iterdir()),
    *sorted((REPO / "infrastructure" / "lightsail").glob("*.sh")),
]


def test_scripts_are_shellcheck_clean(tmp_path: Path) -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck); .ci/run installs it")
    # the scripts deploy.sh sends to `bash -s` on the box are checked as files of their own
    bodies = re.findall(r"cat <<'BOX'\n(.*?)\nBOX\n", (REPO / "deploy.sh").read_text(), re.DOTALL)
    assert len(bodies) == 3
    box_scripts = []
    for number, body in enumerate(bodies):
        box_scripts.append(tmp_path / f"box-script-{number}.sh")
        box_scripts[-1].write_text(f"#!/bin/bash\n{body}\n")
    scripts = [*SCRIPTS, *box_scripts]
    result = subprocess.run(
        [shellcheck, "-S", "warning", *map(str, scripts)], capture_output=True, text=True, check=False
    )
    print(f"shellcheck -S warning on {', '.join(p.name for p in scripts)}: exit {result.returncode}")
    assert result.returncode == 0, result.stdout


def test_user_data_installs_from_ubuntu_packages_only() -> None:
    script = (REPO / "infrastructure" / "lightsail" / "user-data.sh").read_text()
    assert script.startswith("#!/bin/sh\n"), "POSIX sh: Lightsail may run it under /bin/sh"
    assert subprocess.run(["sh", "-n", "-c", script], check=False).returncode == 0
    for needed in (
        "docker.io",
        "docker-compose-v2",
        "unattended-upgrades",
        "fallocate -l 1G /swapfile",
        'usermod -aG docker "$SSH_USER"',
        "SSH_USER=ubuntu",
        "REMOTE_DIR=/opt/streaming-service",
        'install -d -o "$SSH_USER"',
    ):
        assert needed in script, needed
    assert "github.com" not in script and "curl -" not in script and "wget" not in script
    print(f"user-data.sh: {len(script)} bytes (Lightsail's limit is 16 KB), POSIX sh syntax ok")
    assert len(script) < 16 * 1024
