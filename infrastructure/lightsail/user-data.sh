#!/bin/sh
# First boot of the Lightsail instance (Ubuntu 24.04 LTS), run once as root by cloud-init (the
# "launch script" deploy.sh passes to create-instances). deploy.sh waits for it with
# `cloud-init status --wait`; its output is in /var/log/cloud-init-output.log.
# Everything comes from Ubuntu's own archive: nothing is downloaded from anywhere else.
# Plain POSIX sh: Lightsail may run a launch script after lines of its own, under /bin/sh.
set -eu
export DEBIAN_FRONTEND=noninteractive

SSH_USER=ubuntu                      # the login user of Lightsail's Ubuntu images
REMOTE_DIR=/opt/streaming-service    # deploy.sh's REMOTE_DIR: docker-compose.yml, .env, data/

# 1 GiB of swap before anything else: 512 MB of RAM is tight for apt, and the container's memory
# limit counts on it. Low swappiness: swap only what has been idle for long.
if ! swapon --show=NAME --noheadings | grep -qx /swapfile; then
  if [ ! -f /swapfile ]; then
    fallocate -l 1G /swapfile
    chmod 600 /swapfile
    mkswap /swapfile
  fi
  swapon /swapfile
fi
grep -q '^/swapfile ' /etc/fstab || echo '/swapfile none swap sw 0 0' >>/etc/fstab
echo 'vm.swappiness=10' >/etc/sysctl.d/90-streaming-service.conf
sysctl -q -p /etc/sysctl.d/90-streaming-service.conf

# Docker and the compose plugin from Ubuntu's packages (docker.io 24+, docker-compose-v2 2.2x).
# The lock timeout and the retries wait out the apt run Ubuntu may start by itself at first boot.
apt_get() {
  for try in 1 2 3 4 5; do
    apt-get -o DPkg::Lock::Timeout=300 -y -q "$@" && return 0
    echo "apt-get $* failed (try $try of 5); retrying in 20 s" >&2
    sleep 20
  done
  return 1
}
apt_get update
apt_get install --no-install-recommends docker.io docker-compose-v2 unattended-upgrades curl
systemctl enable --now docker
usermod -aG docker "$SSH_USER"

# Logs of every container rotate (the compose file sets the same for the service).
if [ ! -f /etc/docker/daemon.json ]; then
  echo '{"log-driver": "json-file", "log-opts": {"max-size": "10m", "max-file": "3"}}' >/etc/docker/daemon.json
  systemctl restart docker
fi

# Security updates every day, by themselves. A kernel update needs a reboot: done at 08:00 UTC
# (03:00/04:00 in New York), hours before the market opens; the container comes back by itself
# (restart: unless-stopped) and picks up from its spool and checkpoint.
cat >/etc/apt/apt.conf.d/20auto-upgrades <<'EOF'
APT::Periodic::Update-Package-Lists "1";
APT::Periodic::Unattended-Upgrade "1";
APT::Periodic::AutocleanInterval "7";
EOF
cat >/etc/apt/apt.conf.d/52streaming-service-upgrades <<'EOF'
Unattended-Upgrade::Automatic-Reboot "true";
Unattended-Upgrade::Automatic-Reboot-Time "08:00";
Unattended-Upgrade::Remove-Unused-Dependencies "true";
EOF
systemctl enable --now unattended-upgrades

# Hardening: keys only, no root login (Lightsail's images mostly do this already); the journal
# kept small on the 20 GB disk.
cat >/etc/ssh/sshd_config.d/60-streaming-service.conf <<'EOF'
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
EOF
systemctl reload ssh || true
mkdir -p /etc/systemd/journald.conf.d
printf '[Journal]\nSystemMaxUse=200M\n' >/etc/systemd/journald.conf.d/60-streaming-service.conf
systemctl restart systemd-journald

# Where deploy.sh puts docker-compose.yml, .env and data/ (the container's volume).
install -d -o "$SSH_USER" -g "$SSH_USER" -m 750 "$REMOTE_DIR" "$REMOTE_DIR/data"
echo "streaming-service first boot done"
