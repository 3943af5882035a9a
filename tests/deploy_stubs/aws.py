"""Stand-in for the AWS CLI (v2): `sts get-caller-identity` and the Lightsail calls deploy.sh makes.

Errors look like the real CLI's ("An error occurred (Code) when calling the Op operation: ...",
exit 254); an unknown operation is an "Invalid choice" (exit 252), as `aws lightsail wait` is.
`--query` takes the JMESPath subset deploy.sh uses (fields, `a.b`, `[]` projections, `[0]`, and
multiselect lists `[x,y]`); `--output text` prints as the CLI does (tabs, one row per inner list,
None for null).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import state as st

OPERATIONS = [
    "get-instance",
    "get-instance-state",
    "create-instances",
    "start-instance",
    "delete-instance",
    "get-bundles",
    "get-blueprints",
    "get-static-ip",
    "allocate-static-ip",
    "attach-static-ip",
    "detach-static-ip",
    "release-static-ip",
    "get-instance-port-states",
    "put-instance-public-ports",
]

BUNDLES = [  # shapes as get-bundles returns them (2024 prices: the IPv6-only nano is the cheapest)
    ("nano_ipv6_3_0", 3.5, 0.5, 0, "LINUX_UNIX"),
    ("nano_3_0", 5.0, 0.5, 1, "LINUX_UNIX"),
    ("micro_ipv6_3_0", 5.0, 1.0, 0, "LINUX_UNIX"),
    ("micro_3_0", 7.0, 1.0, 1, "LINUX_UNIX"),
    ("small_3_0", 12.0, 2.0, 1, "LINUX_UNIX"),
    ("nano_win_3_0", 9.5, 0.5, 1, "WINDOWS"),
]
BLUEPRINTS = ["amazon_linux_2023", "ubuntu_22_04", "ubuntu_24_04", "debian_12", "windows_server_2022"]


def main(argv: list[str]) -> None:
    options, words = parse(argv)
    st.record("aws", argv, region=options.get("region"), query=options.get("query"))
    if len(words) < 2:
        st.fail("usage: aws [options] <command> <subcommand> [parameters]", 252)
    service, operation = words[0], words[1]
    if "region" not in options:
        st.fail(
            'You must specify a region. You can also configure your region by running "aws configure".', 253
        )
    if service == "sts" and operation == "get-caller-identity":
        if st.read()["faults"].get("no_credentials"):
            st.fail(
                'Unable to locate credentials. You can configure credentials by running "aws configure".', 253
            )
        output(
            {"UserId": "AIDAEXAMPLE", "Account": "123456789012", "Arn": "arn:aws:iam::123456789012:user/me"},
            options,
        )
        return
    if service != "lightsail" or operation not in OPERATIONS:
        st.fail(
            f"aws: error: argument operation: Invalid choice, valid choices are:\n\n{' | '.join(OPERATIONS)}",
            252,
        )
    with st.changing() as state:
        result = Lightsail(state, operation, options).run()
    output(result, options)


FLAGS = {"include-inactive", "no-cli-pager", "no-paginate", "debug", "force-delete-add-ons"}
LISTS = {"instance-names"}  # these take every value up to the next --option


def parse(argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """--name value pairs (a list for LISTS, True for FLAGS) and the bare words (service, operation)."""
    options: dict[str, Any] = {}
    words: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            words.append(arg)
        elif arg[2:] in FLAGS:
            options[arg[2:]] = True
        elif arg[2:] in LISTS:
            values = []
            while i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                i += 1
                values.append(argv[i])
            options[arg[2:]] = values
        else:
            if i + 1 >= len(argv):
                st.fail(f"aws: error: argument {arg}: expected one argument", 252)
            i += 1
            options[arg[2:]] = argv[i]
        i += 1
    return options, words


class Lightsail:
    def __init__(self, state: dict[str, Any], operation: str, options: dict[str, Any]) -> None:
        self.state, self.operation, self.options = state, operation, options
        self.faults: dict[str, Any] = state["faults"]

    def run(self) -> Any:
        return getattr(self, self.operation.replace("-", "_"))()

    def error(self, code: str, message: str) -> None:
        name = "".join(part.title() for part in self.operation.split("-"))
        st.fail(f"\nAn error occurred ({code}) when calling the {name} operation: {message}", 254)

    def instance(self) -> dict[str, Any]:
        name = self.options.get("instance-name")
        found: dict[str, Any] | None = self.state["instances"].get(name)
        if found is None:
            self.error("NotFoundException", "The Instance does not exist")
        assert found is not None
        return found

    def static_ip(self) -> dict[str, Any]:
        found: dict[str, Any] | None = self.state["static_ips"].get(self.options.get("static-ip-name"))
        if found is None:
            self.error("NotFoundException", "The StaticIp does not exist")
        assert found is not None
        return found

    # --- instances
    def get_instance(self) -> Any:
        i = self.instance()
        return {
            "instance": {
                "name": i["name"],
                "state": {"code": 16, "name": i["state"]},
                "publicIpAddress": st.public_ip(self.state, i),
                "username": i["username"],
                "blueprintId": i["blueprint"],
                "bundleId": i["bundle"],
                "isStaticIp": any(ip["attached_to"] == i["name"] for ip in self.state["static_ips"].values()),
            }
        }

    def get_instance_state(self) -> Any:
        i = self.instance()
        i["state_polls"] += 1
        if (
            i["state"] == "pending"
            and not self.faults.get("never_running")
            and (i["state_polls"] >= self.faults.get("running_after_polls", 2))
        ):
            i["state"] = "running"
        return {"state": {"code": 16 if i["state"] == "running" else 0, "name": i["state"]}}

    def create_instances(self) -> Any:
        if self.faults.get("create_error") == "quota":
            self.error(
                "ServiceException",
                "Sorry, you've reached the maximum number of instances (20) allowed "
                "in this Region for your account (quota: Lightsail instances)",
            )
        names = self.options["instance-names"]
        if len(names) != 1:
            self.error("InvalidInputException", "this stub creates one instance at a time")
        name = names[0]
        if name in self.state["instances"]:
            self.error("InvalidInputException", f"Some names are already in use: {name}")
        for key in ("availability-zone", "blueprint-id", "bundle-id"):
            if key not in self.options:
                st.fail(f"aws: error: the following arguments are required: --{key}", 252)
        if self.options["blueprint-id"] not in BLUEPRINTS:
            self.error("InvalidInputException", f"Invalid blueprint: {self.options['blueprint-id']}")
        if self.options["bundle-id"] not in [b[0] for b in BUNDLES]:
            self.error("InvalidInputException", f"Invalid bundle: {self.options['bundle-id']}")
        user_data = self.options.get("user-data", "")
        if user_data.startswith("file://"):
            user_data = Path(user_data[len("file://") :]).read_text()
        number = len(self.state["instances_created"]) + 10
        self.state["instances"][name] = {
            "name": name,
            "state": "pending",
            "state_polls": 0,
            "username": "ubuntu",
            "blueprint": self.options["blueprint-id"],
            "bundle": self.options["bundle-id"],
            "zone": self.options["availability-zone"],
            "ip_address_type": self.options.get("ip-address-type"),
            "key_pair": self.options.get("key-pair-name"),
            "user_data": user_data,
            "dynamic_ip": f"198.51.100.{number}",
            "ports": [_port(22), _port(80)],  # a new Linux instance opens SSH and HTTP
        }
        self.state["instances_created"].append(name)
        st.reset_box(self.state)
        return {
            "operations": [{"resourceName": name, "operationType": "CreateInstance", "status": "Started"}]
        }

    def start_instance(self) -> Any:
        i = self.instance()
        i["state"], i["state_polls"] = "pending", 0
        return {"operations": [{"operationType": "StartInstance"}]}

    def delete_instance(self) -> Any:
        i = self.instance()
        del self.state["instances"][i["name"]]
        for ip in self.state["static_ips"].values():
            if ip["attached_to"] == i["name"]:
                ip["attached_to"] = None
        st.reset_box(self.state)
        return {"operations": [{"operationType": "DeleteInstance"}]}

    # --- catalogue
    def get_bundles(self) -> Any:
        return {
            "bundles": [
                {
                    "bundleId": b,
                    "price": price,
                    "ramSizeInGb": ram,
                    "cpuCount": 2,
                    "diskSizeInGb": 20,
                    "isActive": True,
                    "publicIpv4AddressCount": ipv4,
                    "supportedPlatforms": [platform],
                }
                for b, price, ram, ipv4, platform in BUNDLES
            ]
        }

    def get_blueprints(self) -> Any:
        return {
            "blueprints": [{"blueprintId": b, "isActive": True, "platform": "LINUX_UNIX"} for b in BLUEPRINTS]
        }

    # --- static IPs
    def get_static_ip(self) -> Any:
        ip = self.static_ip()
        return {
            "staticIp": {
                "name": ip["name"],
                "ipAddress": ip["ip"],
                "attachedTo": ip["attached_to"],
                "isAttached": ip["attached_to"] is not None,
            }
        }

    def allocate_static_ip(self) -> Any:
        name = self.options["static-ip-name"]
        if name in self.state["static_ips"]:
            self.error("InvalidInputException", f"The static IP name {name} is already in use")
        number = int(hashlib.sha256(name.encode()).hexdigest(), 16) % 200 + 20
        self.state["static_ips"][name] = {"name": name, "ip": f"203.0.113.{number}", "attached_to": None}
        self.state["static_ips_allocated"].append(name)
        return {"operations": [{"operationType": "AllocateStaticIp"}]}

    def attach_static_ip(self) -> Any:
        ip, i = self.static_ip(), self.instance()
        if ip["attached_to"] is not None:
            self.error("InvalidInputException", f"The static IP is already attached to {ip['attached_to']}")
        ip["attached_to"] = i["name"]
        return {"operations": [{"operationType": "AttachStaticIp"}]}

    def detach_static_ip(self) -> Any:
        self.static_ip()["attached_to"] = None
        return {"operations": [{"operationType": "DetachStaticIp"}]}

    def release_static_ip(self) -> Any:
        ip = self.static_ip()
        if ip["attached_to"] is not None:
            self.error("InvalidInputException", "Detach the static IP before releasing it")
        del self.state["static_ips"][ip["name"]]
        return {"operations": [{"operationType": "ReleaseStaticIp"}]}

    # --- firewall
    def get_instance_port_states(self) -> Any:
        return {"portStates": [{**p, "state": "open"} for p in self.instance()["ports"]]}

    def put_instance_public_ports(self) -> Any:
        i = self.instance()
        ports = json.loads(self.options["port-infos"])
        for port in ports:
            if not {"fromPort", "toPort", "protocol"} <= port.keys():
                self.error("InvalidInputException", f"incomplete port info {port}")
        i["ports"] = ports
        return {"operation": {"operationType": "PutInstancePublicPorts"}}


def _port(number: int) -> dict[str, Any]:
    return {
        "fromPort": number,
        "toPort": number,
        "protocol": "tcp",
        "cidrs": ["0.0.0.0/0"],
        "ipv6Cidrs": ["::/0"],
    }


# --- --query and --output ---------------------------------------------------------------------------
def output(result: Any, options: dict[str, Any]) -> None:
    if "query" in options:
        result = search(options["query"], result)
    if options.get("output") == "text":
        sys.stdout.write(text(result))
    else:
        sys.stdout.write(json.dumps(result, indent=4) + "\n")


def split_top(expression: str, separator: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in expression:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == separator and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


def search(expression: str, data: Any) -> Any:
    return _apply(split_top(expression, "."), data)


def _apply(steps: list[str], data: Any) -> Any:
    if not steps or data is None:
        return data
    step, rest = steps[0], steps[1:]
    if step.startswith("[") and step != "[]":  # multiselect list
        return _apply(rest, [search(part, data) for part in split_top(step[1:-1], ",")])
    match = re.fullmatch(r"(\w+)(\[\]|\[(\d+)\])?", step)
    if match is None:
        st.fail(f"stub aws: unsupported --query step {step!r}", 255)
    assert match is not None
    value = data.get(match[1]) if isinstance(data, dict) else None
    if match[2] == "[]":
        if not isinstance(value, list):
            return None
        return [r for r in (_apply(rest, item) for item in value) if r is not None]
    if match[3] is not None:
        value = value[int(match[3])] if isinstance(value, list) and int(match[3]) < len(value) else None
    return _apply(rest, value)


def _scalar(value: Any) -> str:
    return "None" if value is None else str(value)


def text(result: Any) -> str:
    if isinstance(result, list):
        if all(isinstance(item, list) for item in result):
            return "".join("\t".join(map(_scalar, row)) + "\n" for row in result)
        return "\t".join(map(_scalar, result)) + "\n"
    if isinstance(result, dict):
        return "\t".join(_scalar(v) for v in result.values() if not isinstance(v, dict | list)) + "\n"
    return _scalar(result) + "\n"


if __name__ == "__main__":
    main(sys.argv[2:])  # argv[1] is the name the stub was called by
