#!/bin/sh
# The image's `streaming-service` (/usr/local/bin, before the Python package on PATH): the container's
# entrypoint, and what `docker compose exec streaming-service streaming-service auth|status|check` runs.
#
# As root it prepares the data volume, then runs the command as the volume's owner, never as root:
#   - the service runs as the uid:gid that owns /app/data on the host (the login user who made
#     ./data), so its files stay the user's; a root-owned directory (made by Docker itself) is given
#     to the image's `streamer` user (10001) instead;
#   - files in it owned by anyone else (an earlier image's uid, `sudo cp`) are handed to that user,
#     and the directory is made writable by it;
#   - the NYSE calendar computed when the image was built is copied next to the token file when the
#     copy there is missing or ends earlier (the image has no pandas to rebuild it).
# As any other user (`docker run --user`, or after the drop above) it only runs the command.
set -eu

data=/app/data
app="/opt/venv/bin/python -m streaming_service"

if [ "$(id -u)" != 0 ]; then
  # shellcheck disable=SC2086 # $app is two words on purpose
  exec $app "$@"
fi

if [ ! -d "$data" ]; then
  echo "streaming-service: $data is missing; mount the data volume there (docker-compose.yml does)" >&2
  exit 2
fi
uid=$(stat -c %u "$data")
gid=$(stat -c %g "$data")
if [ "$uid" = 0 ]; then
  uid=10001
  gid=10001
  chown "$uid:$gid" "$data"
fi
chmod u+rwx "$data"

# The calendar cache lives next to the token file (streaming_service.cli).
cache="$(dirname "${SCHWAB_TOKEN_PATH:-data/schwab_token.json}")/market_hours.json"
if [ -d "$(dirname "$cache")" ]; then
  /opt/venv/bin/python -I -S - /usr/local/share/streaming-service/market_hours.json "$cache" <<'EOF'
import json
import os
import shutil
import sys
from datetime import UTC, datetime


def last_close(path):
    try:
        with open(path) as file:
            return float(json.load(file)[-1][1])
    except (OSError, ValueError, TypeError, IndexError, KeyError):
        return None


seed, cache = sys.argv[1:]
shipped, present = last_close(seed), last_close(cache)
if shipped is not None and (present is None or present < shipped):
    shutil.copyfile(seed, cache + ".seed")
    os.replace(cache + ".seed", cache)
    until = datetime.fromtimestamp(shipped, UTC).isoformat()
    line = {"event": "calendar copied from the image", "path": cache, "covers_until": until}
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")  # as structlog writes it
    print(json.dumps({**line, "level": "info", "timestamp": now}), file=sys.stderr)
EOF
fi

# Hand over what others own (-h: a symbolic link is changed itself, never what it points to).
find "$data" -xdev ! -user "$uid" -exec chown -h "$uid:$gid" {} +

# HOME: the uid may have no entry in /etc/passwd; /tmp is writable (a tmpfs with read_only: true).
HOME=/tmp
export HOME
exec setpriv --reuid="$uid" --regid="$gid" --clear-groups -- "$0" "$@"
