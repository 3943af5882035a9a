"""`python tests/verify_process.py API_BASE_URL [verify's arguments]`: `streaming-service verify`
as a person runs it (arguments parsed by the real parser, settings from the environment, printing,
exit codes), with Schwab's REST API at API_BASE_URL (a simulator in another process)."""

from __future__ import annotations

import sys

from streaming_service import cli

if __name__ == "__main__":
    url, *argv = sys.argv[1:]
    args = cli._parser().parse_args(["verify", *argv])
    sys.exit(cli.run_command(cli._verify(args, api_base_url=url)))
