#!/usr/bin/env bash
# Create (once) a Lightsail nano instance and deploy or update the service on it.
# Needs: aws CLI v2 configured, .env and data/schwab_token.json in this directory.
# Usage: ./deploy.sh            (INSTANCE_NAME, REGION, BUNDLE, SSH_KEY may be set in the environment)
set -euo pipefail
cd "$(dirname "$0")"

INSTANCE_NAME=${INSTANCE_NAME:-equity-options-streamer}
REGION=${REGION:-us-east-1}
BUNDLE=${BUNDLE:-nano_3_0}
SSH_KEY=${SSH_KEY:-$HOME/.ssh/LightsailDefaultKey-$REGION.pem}
REMOTE_DIR=/opt/streaming-service

die() { echo "deploy.sh: $*" >&2; exit 1; }
command -v aws >/dev/null || die "aws CLI not found: install AWS CLI v2 and run 'aws configure'."
[ -f .env ] || die ".env not found: cp .env.example .env and fill it in."
[ -f data/schwab_token.json ] || die "data/schwab_token.json not found: create the Schwab token first (README, 'Schwab token')."
[ -f "$SSH_KEY" ] || die "SSH key $SSH_KEY not found: download it from the Lightsail console (Account > SSH keys) or set SSH_KEY."

if ! aws lightsail get-instance --instance-name "$INSTANCE_NAME" --region "$REGION" >/dev/null 2>&1; then
  echo "Creating Lightsail instance $INSTANCE_NAME ($BUNDLE) in $REGION..."
  aws lightsail create-instances --region "$REGION" --instance-names "$INSTANCE_NAME" \
    --availability-zone "${REGION}a" --blueprint-id amazon_linux_2023 --bundle-id "$BUNDLE" \
    --user-data "file://infrastructure/lightsail/user-data.sh" >/dev/null
  aws lightsail wait instance-running --instance-name "$INSTANCE_NAME" --region "$REGION" 2>/dev/null || true
fi

IP=$(aws lightsail get-instance --instance-name "$INSTANCE_NAME" --region "$REGION" \
  --query 'instance.publicIpAddress' --output text)
echo "Instance IP: $IP"
SSH=(ssh -i "$SSH_KEY" -o StrictHostKeyChecking=accept-new "ec2-user@$IP")

echo "Waiting for SSH and Docker (first boot installs Docker; this can take a few minutes)..."
for _ in $(seq 1 60); do
  "${SSH[@]}" 'docker compose version' >/dev/null 2>&1 && break
  sleep 10
done
"${SSH[@]}" 'docker compose version' >/dev/null 2>&1 || die "Docker is not ready on $IP; check /var/log/cloud-init-output.log there."

echo "Copying the project..."
tar czf - --exclude=.git --exclude=.venv --exclude='data/*.db*' \
  Dockerfile docker-compose.yml pyproject.toml README.md streaming_service supabase .env data/schwab_token.json \
  | "${SSH[@]}" "mkdir -p $REMOTE_DIR && tar xzf - -C $REMOTE_DIR"

echo "Building and starting..."
"${SSH[@]}" "cd $REMOTE_DIR && docker compose up -d --build && docker compose ps"
echo "Done. Logs: ssh -i $SSH_KEY ec2-user@$IP 'cd $REMOTE_DIR && docker compose logs -f'"
