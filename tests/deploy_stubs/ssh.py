"""Stand-in for `ssh` (and a guard for `scp`): reaches "the box" when the address belongs to a running
instance, then runs the command with bash in the box's directory, with the box's stubs (docker, sudo,
cloud-init, curl) first on PATH and none of this machine's environment, as sshd would.

Records each call with its -o options, so tests can check BatchMode, ConnectTimeout and
StrictHostKeyChecking. Fault `ssh: refused` answers as a closed port does.
"""

from __future__ import annotations

import os
import sys

import state as st

WITH_VALUE = set("bcDEeFIiJLlmOopQRSWw")


def main(tool: str, argv: list[str]) -> None:
    if tool != "ssh":
        st.record(tool, argv)
        st.fail(f"stub {tool}: deploy.sh is expected to copy over ssh, not {tool}", 1)
    options: dict[str, str] = {}
    flags: list[str] = []
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        letter = argv[i][1]
        if letter in WITH_VALUE:
            value = argv[i][2:] or argv[i + 1]
            i += 0 if argv[i][2:] else 1
            if letter == "o":
                key, _, val = value.partition("=")
                options[key] = val
            else:
                options[f"-{letter}"] = value
        else:
            flags.extend(argv[i][1:])
        i += 1
    destination, command = argv[i], " ".join(argv[i + 1 :])
    user, _, host = destination.rpartition("@")
    st.record("ssh", argv, options=options, flags=flags, user=user, host=host, command=command)

    state = st.read()
    if state["faults"].get("ssh") == "refused":
        st.fail(f"ssh: connect to host {host} port 22: Connection refused", 255)
    instance = next((i for i in state["instances"].values() if st.public_ip(state, i) == host), None)
    if instance is None:
        st.fail(f"ssh: connect to host {host} port 22: Connection timed out", 255)
    assert instance is not None
    if user != instance["username"] or not os.path.isfile(options.get("-i", "")):
        st.fail(f"{destination}: Permission denied (publickey).", 255)
    if "N" in flags or not command:  # a tunnel or an interactive shell: the person ends it at once
        return
    home = st.box_root() / st.HOME_OF_BOX
    os.chdir(home)
    box_bin = str(st.state_path().parent / "boxbin")
    env = {
        "PATH": f"{box_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(home),
        "USER": "ubuntu",
        "SHELL": "/bin/bash",
        "LANG": "C.UTF-8",
        "STUB_STATE": os.environ["STUB_STATE"],
        "STUB_SIDE": "box",
    }
    os.execve("/bin/bash", ["bash", "-c", command], env)


if __name__ == "__main__":
    main(os.path.basename(sys.argv[1]), sys.argv[2:])
