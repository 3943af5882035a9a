#!/usr/bin/env bash
# Make sure the Dockerfile's base image exists locally. Where it is missing and this machine can
# (root, debootstrap: our CI, which reaches no image registry), build a stand-in from Debian's packages:
#   debootstrap (bookworm, minbase, python3 + venv + pip + CA certificates) -> docker import,
#   with this host's CA bundle, `python` -> python3, and no EXTERNALLY-MANAGED marker (the real
#   python:3.11-slim has neither marker nor Debian's python; both have Python 3.11 on bookworm).
# An image already present under that name (the real one, or a stand-in built before) is kept.
# Usage: scripts/docker-base.sh [IMAGE]   (default: the first FROM of ./Dockerfile)
# Needs: a running Docker daemon; debootstrap and root to build the stand-in. Never pulls.
set -euo pipefail
cd "$(dirname "$0")/.."

image=${1:-$(awk 'toupper($1) == "FROM" { print $2; exit }' Dockerfile)}
# A `FROM name:tag AS stage` may carry an ARG default; only literal names are supported here.
case $image in
  *'$'*) echo "docker-base.sh: cannot resolve the base image name '$image' from Dockerfile" >&2; exit 2 ;;
esac

if docker image inspect "$image" >/dev/null 2>&1; then
  echo "docker-base.sh: $image is present ($(docker image inspect -f '{{index .Config.Labels "stand-in"}}' "$image" | sed 's/^$/real image/'))"
  exit 0
fi

# Without debootstrap or root (a developer's machine), `docker build` pulls the real image itself.
if ! command -v debootstrap >/dev/null || [ "$(id -u)" -ne 0 ]; then
  echo "docker-base.sh: $image is not here and no stand-in can be built (needs debootstrap and root): docker build will pull it"
  exit 0
fi

mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
root=$(mktemp -d /var/tmp/docker-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "docker-base.sh: $image is not here; building a stand-in with debootstrap from $mirror (a few minutes)"
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
  bookworm "$root" "$mirror" >"$root.log" 2>&1 || { tail -n 20 "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"

# The real slim image: python and pip on PATH, no EXTERNALLY-MANAGED marker, no apt lists or caches.
ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
ln -sf /usr/bin/pip3 "$root/usr/local/bin/pip"
rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
# This host's CA bundle: the build reaches PyPI through whatever this host trusts.
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*

tar -C "$root" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'LABEL stand-in="debootstrap bookworm minbase + python3 (not the registry image)"' \
  --change 'CMD ["python3"]' \
  - "$image" >/dev/null
echo "docker-base.sh: built the stand-in $image ($(docker image inspect -f '{{.Size}}' "$image") bytes)"
