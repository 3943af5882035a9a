#!/usr/bin/env bash
# deploy.sh: run the service on one AWS Lightsail instance (Ubuntu 24.04 LTS, Docker from Ubuntu's
# own packages). The image is built on this machine and shipped over ssh; the box never builds.
# `./deploy.sh --help` lists the subcommands and settings. Written for bash 3.2 (macOS) and later.
set -euo pipefail
cd "$(dirname "$0")"

PROG=deploy.sh
SUBCOMMANDS="up status logs ssh restart down destroy token tunnel"
IMAGE=schwab-supabase-streamer:latest   # built here with `docker build -t $IMAGE .`
SERVICE=streaming-service               # the service's name in docker-compose.yml
BLUEPRINT=ubuntu_24_04                  # Ubuntu 24.04 LTS; its login user is `ubuntu`
USER_DATA=infrastructure/lightsail/user-data.sh
TOKEN_FILE=data/schwab_token.json       # here and, relative to REMOTE_DIR, on the box
BOX_HEALTH_PORT=8787                    # docker-compose.yml publishes /healthz on 127.0.0.1:8787 of the box
REFRESH_TOKEN_LIFE_S=604800             # Schwab's refresh token lasts 7 days from creation_timestamp

# --- Settings: environment or flags (see usage) -------------------------------------------------
INSTANCE_NAME=${INSTANCE_NAME:-equity-options-streamer}
REGION=${REGION:-us-east-1}
BUNDLE=${BUNDLE:-}                      # empty: the cheapest dual-stack Linux bundle with BUNDLE_RAM_GB
BUNDLE_RAM_GB=${BUNDLE_RAM_GB:-0.5}
AVAILABILITY_ZONE=${AVAILABILITY_ZONE:-}
KEY_PAIR=${KEY_PAIR:-}                  # empty: the region's default Lightsail key pair
SSH_KEY=${SSH_KEY:-}
SSH_CIDR=${SSH_CIDR:-}                  # empty: leave an SSH-only firewall as it is; my-ip: this machine's /32
STATIC_IP_NAME=${STATIC_IP_NAME:-}
REMOTE_DIR=${REMOTE_DIR:-/opt/streaming-service}
TUNNEL_PORT=${TUNNEL_PORT:-8787}
LOG_TAIL=${LOG_TAIL:-200}
# Bounded waits, in seconds: the defaults suit a real first boot; tests make them small.
DEPLOY_STATE_TIMEOUT=${DEPLOY_STATE_TIMEOUT:-300}        # instance reaching `running`
DEPLOY_IP_TIMEOUT=${DEPLOY_IP_TIMEOUT:-120}              # the static IP showing as the instance's address
DEPLOY_SSH_TIMEOUT=${DEPLOY_SSH_TIMEOUT:-300}            # sshd answering with our key
DEPLOY_CLOUD_INIT_TIMEOUT=${DEPLOY_CLOUD_INIT_TIMEOUT:-900}  # first-boot setup (Docker, swap, updates)
DEPLOY_HEALTH_TIMEOUT=${DEPLOY_HEALTH_TIMEOUT:-180}      # /healthz answering healthy after a start
DEPLOY_POLL_INTERVAL=${DEPLOY_POLL_INTERVAL:-5}
DEPLOY_SSH_CONNECT_TIMEOUT=${DEPLOY_SSH_CONNECT_TIMEOUT:-10}

export AWS_PAGER=""                     # AWS CLI v2 would otherwise page some output through less
export COPYFILE_DISABLE=1               # no macOS resource forks in anything we send

usage() {
  cat <<EOF
Usage: ./deploy.sh [SUBCOMMAND] [OPTIONS]

Runs the streaming service on one AWS Lightsail instance. The image is built on this machine
(docker build) and shipped over ssh; the instance never builds.

Subcommands:
  up              (default) create the instance once if missing, then build, ship and start;
                  waits until /healthz is healthy (or waiting for the open)
  status          instance, container, /healthz and the Schwab token's expiry; exit 0 only if healthy
  logs [-f]       the service's last $LOG_TAIL log lines (-f: follow)
  ssh [COMMAND]   a shell (or COMMAND) on the instance, in $REMOTE_DIR
  restart         restart the container, then wait for /healthz
  down            stop the service (docker compose down); the instance and its data stay
  destroy [--yes] delete the instance and release its static IP (asks unless --yes)
  token           push data/schwab_token.json to the instance even if the instance's is newer,
                  restarting the service (it would otherwise keep its old login)
  tunnel          forward 127.0.0.1:PORT here (--port) to the dashboard and /healthz on the instance; Ctrl-C ends it

Options (or the environment variable in brackets):
  --name NAME       instance name [INSTANCE_NAME, default equity-options-streamer]
  --region REGION   AWS region [REGION, default us-east-1]
  --bundle ID       Lightsail bundle [BUNDLE; default: the cheapest dual-stack Linux bundle with
                    BUNDLE_RAM_GB=0.5 GB, found with aws lightsail get-bundles]
  --ssh-key FILE    private key [SSH_KEY, default ~/.ssh/LightsailDefaultKey-REGION.pem]
  --ssh-cidr CIDR   who may reach port 22: a CIDR, or my-ip for this machine's address
                    [SSH_CIDR; default: everyone on a new instance, unchanged on an existing one]
  --port N          local port for tunnel [TUNNEL_PORT, default 8787]
  --no-build        up: ship the local image as it is (built elsewhere, e.g. in CI)
  --yes, -y         destroy: do not ask
  -f, --follow      logs: keep following
  -h, --help        this text
Also: KEY_PAIR, AVAILABILITY_ZONE (default REGION + a), STATIC_IP_NAME (default NAME-ip),
REMOTE_DIR (default /opt/streaming-service), LOG_TAIL, DEPLOY_*_TIMEOUT (seconds).
EOF
}

# --- Output and errors -----------------------------------------------------------------------------
die() { printf '%s: %s\n' "$PROG" "$*" >&2; exit 1; }
say() { printf '==> %s\n' "$*"; }
warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }

# missing PROBLEM...: note an unmet prerequisite; check_prerequisites reports them all at once.
MISSING="" MISSING_COUNT=0
missing() {
  MISSING="$MISSING  - $*"$'\n'
  MISSING_COUNT=$((MISSING_COUNT + 1))
  LAST_MISSING="$*"
}

# check_prerequisites SUBCOMMAND: the local files, tools and credentials SUBCOMMAND needs, checked
# before it does anything; dies listing every one that is missing.
check_prerequisites() {
  case $1 in
    up)
      [ -f .env ] || missing ".env not found: cp .env.example .env and fill it in"
      [ -f docker-compose.yml ] || missing "docker-compose.yml not found next to deploy.sh"
      [ -f "$USER_DATA" ] || missing "$USER_DATA not found" ;;
    token) [ -f "$TOKEN_FILE" ] || missing "no $TOKEN_FILE here: run 'streaming-service auth' first" ;;
  esac
  [ "$1" = destroy ] || check_ssh
  check_aws
  [ "$1" != up ] || check_docker
  [ "$MISSING_COUNT" -gt 0 ] || return 0
  [ "$MISSING_COUNT" -gt 1 ] || die "$LAST_MISSING"
  printf "%s: %s prerequisites of './deploy.sh %s' are missing:\n%s" "$PROG" "$MISSING_COUNT" "$1" "$MISSING" >&2
  die "fix the $MISSING_COUNT problems above, then run './deploy.sh $1' again"
}

# retry_for SECONDS COMMAND...: run COMMAND until it succeeds (0) or SECONDS have passed (1).
retry_for() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep "$DEPLOY_POLL_INTERVAL"
  done
}

# --- AWS ------------------------------------------------------------------------------------------
# aws_run ARGS...: the AWS CLI in REGION; its error text stays in $WORK/aws.err for aws_error.
aws_run() { aws --region "$REGION" "$@" 2>"$WORK/aws.err"; }
aws_error() { tr -s '\n' ' ' <"$WORK/aws.err" | sed 's/^ *//; s/ *$//'; }
aws_not_found() { grep -q 'NotFoundException' "$WORK/aws.err"; }

check_aws() {
  if ! command -v aws >/dev/null; then
    missing "the aws CLI is not installed: install AWS CLI v2, then run 'aws configure'"
  elif ! aws_run sts get-caller-identity --query Account --output text >/dev/null; then
    missing "no usable AWS credentials (aws sts get-caller-identity: $(aws_error)); run 'aws configure' or set AWS_PROFILE"
  fi
}

# load_instance: sets INSTANCE_STATE, INSTANCE_IP, SSH_USER, INSTANCE_BLUEPRINT, INSTANCE_BUNDLE;
# returns 1 when the instance does not exist; any other AWS error is fatal.
load_instance() {
  local row
  if ! row=$(aws_run lightsail get-instance --instance-name "$INSTANCE_NAME" --output text \
      --query 'instance.[state.name,publicIpAddress,username,blueprintId,bundleId]'); then
    aws_not_found && return 1
    die "cannot read instance $INSTANCE_NAME in $REGION: $(aws_error)"
  fi
  IFS=$'\t' read -r INSTANCE_STATE INSTANCE_IP SSH_USER INSTANCE_BLUEPRINT INSTANCE_BUNDLE <<<"$row"
  [ "$SSH_USER" != None ] || SSH_USER=ubuntu
}

# resolve_bundle: BUNDLE checked against get-bundles, or the cheapest dual-stack Linux one with
# BUNDLE_RAM_GB. IPv6-only bundles are refused: Schwab's API has no IPv6 address.
resolve_bundle() {
  local rows row
  rows=$(aws_run lightsail get-bundles --output text \
    --query 'bundles[].[bundleId,price,ramSizeInGb,isActive,publicIpv4AddressCount,supportedPlatforms[0]]') ||
    die "cannot list Lightsail bundles in $REGION: $(aws_error)"
  if [ -z "$BUNDLE" ]; then
    BUNDLE=$(awk -F'\t' -v ram="$BUNDLE_RAM_GB" \
      '$4 == "True" && $6 == "LINUX_UNIX" && $3 + 0 == ram + 0 && $5 != "0" && $1 !~ /ipv6/' <<<"$rows" |
      sort -t "$(printf '\t')" -k2,2n | head -n 1 | cut -f 1)
    [ -n "$BUNDLE" ] || die "no active dual-stack Linux bundle with $BUNDLE_RAM_GB GB of RAM in $REGION;" \
      "choose one with --bundle (aws lightsail get-bundles --region $REGION lists them)"
  fi
  row=$(awk -F'\t' -v id="$BUNDLE" '$1 == id' <<<"$rows")
  [ -n "$row" ] || die "bundle $BUNDLE does not exist in $REGION (aws lightsail get-bundles lists them)"
  local active ipv4 platform
  IFS=$'\t' read -r _ BUNDLE_PRICE _ active ipv4 platform <<<"$row"
  if [ "$ipv4" = 0 ] || [[ $BUNDLE == *ipv6* ]]; then
    die "bundle $BUNDLE is IPv6-only: Schwab's API has no IPv6 address; use a dual-stack bundle such as nano_3_0"
  fi
  if [ "$active" != True ] || [ "$platform" != LINUX_UNIX ]; then
    die "bundle $BUNDLE is not an active Linux bundle in $REGION"
  fi
}

check_blueprint() {
  local rows
  rows=$(aws_run lightsail get-blueprints --output text --query 'blueprints[].[blueprintId,isActive]') ||
    die "cannot list Lightsail blueprints in $REGION: $(aws_error)"
  grep -q "^$BLUEPRINT"$'\t'"True\$" <<<"$rows" ||
    die "blueprint $BLUEPRINT (Ubuntu 24.04 LTS) is not offered in $REGION; offered:" \
      "$(cut -f 1 <<<"$rows" | grep '^ubuntu' | tr '\n' ' ')"
}

create_instance() {
  resolve_bundle
  check_blueprint
  local zone=${AVAILABILITY_ZONE:-${REGION}a}
  say "creating instance $INSTANCE_NAME: $BLUEPRINT, bundle $BUNDLE (\$$BUNDLE_PRICE/month), $zone"
  local args=(--instance-names "$INSTANCE_NAME" --availability-zone "$zone" --blueprint-id "$BLUEPRINT"
    --bundle-id "$BUNDLE" --ip-address-type dualstack --user-data "file://$USER_DATA")
  if [ -n "$KEY_PAIR" ]; then args+=(--key-pair-name "$KEY_PAIR"); fi
  if ! aws_run lightsail create-instances "${args[@]}" >/dev/null; then
    local hint=""
    if grep -qiE 'quota|limit|maximum' "$WORK/aws.err"; then
      hint=" (an account limit: delete an unused instance, or ask AWS Support to raise the Lightsail quota)"
    fi
    die "creating instance $INSTANCE_NAME in $REGION failed: $(aws_error)$hint"
  fi
  rm -f "$KNOWN_HOSTS"  # a new machine has a new host key
}

instance_state_is_running() {
  if LAST_STATE=$(aws_run lightsail get-instance-state --instance-name "$INSTANCE_NAME" \
      --query state.name --output text); then
    [ "$LAST_STATE" = running ]
  else
    LAST_STATE="unknown ($(aws_error))"
    return 1
  fi
}

# ensure_instance: the instance exists and runs (created or started if needed; never a second one).
ensure_instance() {
  if load_instance; then
    say "instance $INSTANCE_NAME exists ($INSTANCE_STATE, $INSTANCE_BUNDLE, $INSTANCE_BLUEPRINT)"
    if [ "$INSTANCE_BLUEPRINT" != "$BLUEPRINT" ]; then
      warn "$INSTANCE_NAME runs $INSTANCE_BLUEPRINT, not $BLUEPRINT (made by an older deploy.sh?);" \
        "continuing as its user $SSH_USER; './deploy.sh destroy' then 'up' moves to Ubuntu 24.04"
    fi
    if [ "$INSTANCE_STATE" = stopped ]; then
      say "starting the stopped instance"
      aws_run lightsail start-instance --instance-name "$INSTANCE_NAME" >/dev/null ||
        die "cannot start instance $INSTANCE_NAME: $(aws_error)"
    fi
  else
    create_instance
  fi
  [ "${INSTANCE_STATE:-}" != running ] || return 0
  LAST_STATE=unknown
  retry_for "$DEPLOY_STATE_TIMEOUT" instance_state_is_running ||
    die "instance $INSTANCE_NAME is not running after ${DEPLOY_STATE_TIMEOUT}s (state: $LAST_STATE); see the Lightsail console"
}

# ensure_static_ip: STATIC_IP_NAME allocated (once) and attached to the instance; sets STATIC_IP.
ensure_static_ip() {
  local row attached
  if ! row=$(aws_run lightsail get-static-ip --static-ip-name "$STATIC_IP_NAME" --output text \
      --query 'staticIp.[ipAddress,attachedTo]'); then
    aws_not_found || die "cannot read static IP $STATIC_IP_NAME: $(aws_error)"
    say "allocating static IP $STATIC_IP_NAME"
    aws_run lightsail allocate-static-ip --static-ip-name "$STATIC_IP_NAME" >/dev/null ||
      die "cannot allocate static IP $STATIC_IP_NAME in $REGION: $(aws_error)"
    row=$(aws_run lightsail get-static-ip --static-ip-name "$STATIC_IP_NAME" --output text \
      --query 'staticIp.[ipAddress,attachedTo]') || die "cannot read static IP $STATIC_IP_NAME: $(aws_error)"
  fi
  IFS=$'\t' read -r STATIC_IP attached <<<"$row"
  [[ $STATIC_IP =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "static IP $STATIC_IP_NAME has no address ($STATIC_IP)"
  if [ "$attached" != "$INSTANCE_NAME" ]; then
    [ "$attached" = None ] || die "static IP $STATIC_IP_NAME ($STATIC_IP) is attached to $attached;" \
      "set STATIC_IP_NAME to use another one"
    say "attaching static IP $STATIC_IP to $INSTANCE_NAME"
    aws_run lightsail attach-static-ip --static-ip-name "$STATIC_IP_NAME" --instance-name "$INSTANCE_NAME" \
      >/dev/null || die "cannot attach static IP $STATIC_IP_NAME to $INSTANCE_NAME: $(aws_error)"
  fi
  retry_for "$DEPLOY_IP_TIMEOUT" instance_has_static_ip ||
    die "instance $INSTANCE_NAME still has public address $INSTANCE_IP, not its static IP $STATIC_IP," \
      "after ${DEPLOY_IP_TIMEOUT}s; see the Lightsail console (Networking)"
}

instance_has_static_ip() { load_instance && [ "$INSTANCE_IP" = "$STATIC_IP" ]; }

# ensure_firewall: only port 22 open. An SSH-only firewall is left alone (it may be restricted)
# unless SSH_CIDR asks for something; anything else open is closed.
ensure_firewall() {
  local open cidr
  open=$(aws_run lightsail get-instance-port-states --instance-name "$INSTANCE_NAME" --output text \
    --query 'portStates[].[fromPort,toPort,protocol,state]') || die "cannot read the firewall: $(aws_error)"
  open=$(awk -F'\t' '$4 == "open" { print ($1 == $2 ? $1 : $1 "-" $2) "/" $3 }' <<<"$open" | sort -u |
    paste -s -d , -)
  if [ "$open" = 22/tcp ] && [ -z "$SSH_CIDR" ]; then
    return
  fi
  case $SSH_CIDR in
    "") cidr=0.0.0.0/0 ;;
    my-ip) find_my_ip; cidr=$MY_IP/32 ;;
    *) cidr=$SSH_CIDR ;;
  esac
  local rule
  if [ "$cidr" = 0.0.0.0/0 ]; then
    rule='{"fromPort":22,"toPort":22,"protocol":"tcp","cidrs":["0.0.0.0/0"],"ipv6Cidrs":["::/0"]}'
  else  # lightsail-connect keeps the console's browser SSH working
    rule='{"fromPort":22,"toPort":22,"protocol":"tcp","cidrs":["'$cidr'"],"ipv6Cidrs":[],"cidrListAliases":["lightsail-connect"]}'
  fi
  say "firewall: only SSH (22/tcp) from $cidr (was: ${open:-nothing})"
  aws_run lightsail put-instance-public-ports --instance-name "$INSTANCE_NAME" --port-infos "[$rule]" \
    >/dev/null || die "cannot set the firewall of $INSTANCE_NAME: $(aws_error)"
}

find_my_ip() {  # sets MY_IP: this machine's public IPv4 address, as AWS sees it
  MY_IP=$(curl -fsS --max-time 10 https://checkip.amazonaws.com 2>/dev/null | tr -d '[:space:]') || true
  [[ $MY_IP =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] ||
    die "cannot find this machine's public IPv4 address for --ssh-cidr my-ip; give a CIDR instead"
}

# --- ssh --------------------------------------------------------------------------------------------
check_ssh() {
  command -v ssh >/dev/null || missing "ssh is not installed here: install the OpenSSH client"
  if [ ! -f "$SSH_KEY" ]; then
    missing "ssh key $SSH_KEY not found: download the default key of $REGION from the" \
      "Lightsail console (Account > SSH keys), or set SSH_KEY / --ssh-key"
  elif [ -n "$(find "$SSH_KEY" -prune \( -perm -040 -o -perm -004 \))" ]; then
    missing "ssh refuses a private key others can read: chmod 600 $SSH_KEY"
  fi
}

# ssh_to_instance: the instance must exist and run; sets TARGET and SSH_OPTS for remote().
ssh_to_instance() {
  load_instance || die "instance $INSTANCE_NAME does not exist in $REGION; './deploy.sh up' creates it"
  [ "$INSTANCE_STATE" = running ] || die "instance $INSTANCE_NAME is $INSTANCE_STATE, not running; './deploy.sh up' starts it"
  use_ssh
}

use_ssh() {
  [[ $INSTANCE_IP =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "instance $INSTANCE_NAME has no public IPv4 address ($INSTANCE_IP)"
  mkdir -p "$(dirname "$KNOWN_HOSTS")"
  TARGET=$SSH_USER@$INSTANCE_IP
  SSH_OPTS=(-i "$SSH_KEY" -o IdentitiesOnly=yes -o BatchMode=yes -o ConnectTimeout="$DEPLOY_SSH_CONNECT_TIMEOUT"
    -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile="$KNOWN_HOSTS"
    -o ServerAliveInterval=15 -o ServerAliveCountMax=4 -o LogLevel=ERROR)
}

remote() { ssh "${SSH_OPTS[@]}" "$TARGET" "$@"; }

tty_wanted() { if [ -t 0 ]; then echo yes; else echo no; fi; }

ssh_answers() { remote true 2>"$WORK/ssh.err"; }

# wait_for_box: sshd answers, first-boot setup (cloud-init: Docker, swap, updates) has finished,
# Docker and compose work for the ssh user, and REMOTE_DIR exists and is theirs.
wait_for_box() {
  say "waiting for ssh on $TARGET"
  retry_for "$DEPLOY_SSH_TIMEOUT" ssh_answers ||
    die "cannot ssh to $TARGET for ${DEPLOY_SSH_TIMEOUT}s ($(tail -n 1 "$WORK/ssh.err")): check that" \
      "$SSH_KEY is the key of the instance's key pair and that port 22 is open to this machine (--ssh-cidr)"
  say "waiting for first-boot setup (cloud-init) to finish"
  remote "CLOUD_INIT_TIMEOUT=$DEPLOY_CLOUD_INIT_TIMEOUT REMOTE_DIR=$REMOTE_DIR bash -s" \
    <<<"$(box_ready_script)" 2>"$WORK/box.err" ||
    die "the instance is not ready: $(tr -s '\n' ' ' <"$WORK/box.err")"
  grep '^warning' "$WORK/box.err" >&2 || true
}

# box_report: one ssh round trip; sets BOX_IMAGE, BOX_TOKEN_CREATED, BOX_TOKEN_MTIME, CONTAINER,
# RESTARTS, DOCKER_HEALTH, HTTP_CODE, HEALTH_JSON ("none"/"-" where there is nothing).
box_report() {
  local report
  report=$(remote "IMAGE=$IMAGE SERVICE=$SERVICE PORT=$BOX_HEALTH_PORT DIR=$REMOTE_DIR TOKEN=$TOKEN_FILE" \
    "bash -s" <<<"$(box_report_script)" 2>"$WORK/ssh.err") ||
    die "cannot read the instance's state over ssh: $(tail -n 1 "$WORK/ssh.err")"
  BOX_IMAGE=$(field image "$report")
  read -r BOX_TOKEN_CREATED BOX_TOKEN_MTIME <<<"$(field token "$report")"
  read -r CONTAINER RESTARTS DOCKER_HEALTH <<<"$(field container "$report")"
  HTTP_CODE=$(field http "$report")
  HEALTH_JSON=$(field body "$report")
  HEALTH_STATE=$(json_value state "$HEALTH_JSON")
}

field() { sed -n "s/^$1 //p" <<<"$2" | head -n 1; }

# json_value KEY JSON: the string or number of "KEY" in the flat /healthz JSON (empty if absent).
json_value() { sed -n "s/.*\"$1\": *\"\{0,1\}\([^\",}]*\).*/\1/p" <<<"$2" | head -n 1; }

# --- Image, files, service ------------------------------------------------------------------------
check_docker() {  # leaves the local Docker's architecture in $WORK/arch
  if ! command -v docker >/dev/null; then
    missing "docker is not installed here: the image is built (or, with --no-build, saved) on this machine"
  elif ! docker version --format '{{.Server.Arch}}' >"$WORK/arch" 2>"$WORK/docker.err"; then
    missing "Docker does not answer here ($(tail -n 1 "$WORK/docker.err")): start it; the image is built on this machine"
  fi
}

build_image() {
  local platform=()
  if [ "$(cat "$WORK/arch")" != amd64 ]; then platform=(--platform linux/amd64); fi  # Lightsail is x86_64
  say "building $IMAGE here"
  # CALENDAR_START: the Dockerfile computes the NYSE calendar from this date (a cached layer renews daily)
  docker build ${platform[@]+"${platform[@]}"} --build-arg "CALENDAR_START=$(date -u +%F)" -t "$IMAGE" . ||
    die "docker build failed (see above)"
}

ship_image() {
  local id
  id=$(docker image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null) ||
    die "no local image $IMAGE: run without --no-build, or docker build -t $IMAGE ."
  if [ "$id" = "$BOX_IMAGE" ]; then
    say "image on the box is up to date (${id:7:12})"
    return
  fi
  say "shipping image ${id:7:12} (docker save | gzip | ssh docker load)"
  docker save "$IMAGE" | gzip | remote 'docker load' >/dev/null 2>"$WORK/load.err" ||
    die "shipping the image failed: $(tail -n 2 "$WORK/load.err" | tr '\n' ' ')"
}

# put_file LOCAL REMOTE MODE: copy LOCAL to REMOTE_DIR/REMOTE with MODE, replaced atomically.
put_file() {
  remote "cd $REMOTE_DIR && umask 077 && cat > $2.new && chmod $3 $2.new && mv -f $2.new $2" <"$1" ||
    die "cannot copy $1 to $TARGET:$REMOTE_DIR/$2"
}

# put_token: the local token to the box, mode 600, keeping the owner of the file it replaces
# (the container may have taken data/ over).
put_token() {
  put_file "$TOKEN_FILE" .token.new 600
  remote "DIR=$REMOTE_DIR TOKEN=$TOKEN_FILE bash -s" <<<"$(box_install_token_script)" ||
    die "cannot install the token at $TARGET:$REMOTE_DIR/$TOKEN_FILE"
}

# token_created FILE: creation_timestamp of a schwab-py token file, or its mtime when it has none.
token_created() {
  local created
  created=$(sed -n 's/.*"creation_timestamp": *\([0-9.]*\).*/\1/p' "$1" | head -n 1)
  [ -n "$created" ] || created=$(stat -c %Y "$1" 2>/dev/null || stat -f %m "$1")
  printf '%s' "$created"
}

newer() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 > b + 0) }'; }

# sync_token [force]: push the local token unless the box has one at least as new (force: always).
# The service is stopped around the copy: a running one holds the old login in memory and would
# write it back over the new file at its next access-token refresh. start_service starts it again.
sync_token() {
  local force=${1:-}
  if [ ! -f "$TOKEN_FILE" ]; then
    [ "$BOX_TOKEN_CREATED" = none ] || { say "no local $TOKEN_FILE; the box keeps its token"; return; }
    die "no Schwab token here ($TOKEN_FILE) nor on the box: run 'streaming-service auth' first (docs/operations.md, 'Schwab token')"
  fi
  local mine theirs
  mine=$(token_created "$TOKEN_FILE")
  theirs=$BOX_TOKEN_CREATED
  [ "$theirs" != - ] || theirs=$BOX_TOKEN_MTIME
  if [ -z "$force" ] && [ "$theirs" != none ] && ! newer "$mine" "$theirs"; then
    say "the box's Schwab token (created $(when "$theirs")) is not older than $TOKEN_FILE" \
      "(created $(when "$mine")): kept; './deploy.sh token' replaces it"
    return
  fi
  say "stopping $SERVICE to copy $TOKEN_FILE (created $(when "$mine"), mode 600)"
  remote "cd $REMOTE_DIR && if [ -n \"\$(docker compose ps -a -q $SERVICE)\" ]; then docker compose stop $SERVICE; fi" ||
    die "docker compose stop failed on the box (see above)"
  put_token
}

start_service() {
  say "starting the service (docker compose up -d; the box never builds)"
  remote "cd $REMOTE_DIR && docker compose up -d --no-build --pull never --remove-orphans &&
    docker image prune -f >/dev/null" || die "docker compose up failed on the box (see above)"
}

# wait_healthy: /healthz answers 200 in `streaming` or `waiting_for_open`, within DEPLOY_HEALTH_TIMEOUT;
# a dead or crash-looping container or an expired login fails at once. Prints the last logs on failure.
wait_healthy() {
  say "waiting for /healthz (at most ${DEPLOY_HEALTH_TIMEOUT}s)"
  local deadline=$((SECONDS + DEPLOY_HEALTH_TIMEOUT)) why
  while :; do
    box_report
    if [ "$HTTP_CODE" = 200 ] && { [ "$HEALTH_STATE" = streaming ] || [ "$HEALTH_STATE" = waiting_for_open ]; }; then
      say "healthy: $HEALTH_STATE; $(token_line)"
      return
    fi
    why="container $CONTAINER (health: $DOCKER_HEALTH, $RESTARTS restarts), /healthz HTTP $HTTP_CODE ${HEALTH_STATE:-no answer}"
    case $CONTAINER in exited | dead | missing) break ;; esac
    [[ $RESTARTS =~ ^[0-9]+$ ]] || RESTARTS=0
    [ "$RESTARTS" -lt 3 ] || { why="crash loop: $why"; break; }
    if [ "$HEALTH_STATE" = reauth_needed ]; then
      why="the Schwab login on the box has expired: run 'streaming-service auth' here, then './deploy.sh token'"
      break
    fi
    [ "$SECONDS" -lt "$deadline" ] || { why="not healthy after ${DEPLOY_HEALTH_TIMEOUT}s: $why"; break; }
    sleep "$DEPLOY_POLL_INTERVAL"
  done
  echo "--- last log lines of $SERVICE on $INSTANCE_NAME:" >&2
  remote "cd $REMOTE_DIR && docker compose logs --no-color --tail 30 $SERVICE" >&2 2>&1 || true
  die "the service is not healthy: $why"
}

# --- Formatting -------------------------------------------------------------------------------------
when() { # epoch seconds -> UTC date (GNU date, then BSD date)
  local s=${1%.*}
  date -u -d "@$s" '+%Y-%m-%d %H:%M UTC' 2>/dev/null || date -u -r "$s" '+%Y-%m-%d %H:%M UTC'
}

duration() { # seconds -> "6 d 23 h" / "5 h 3 min" / "12 min"
  local s=${1%.*}
  if [ "$s" -ge 86400 ]; then echo "$((s / 86400)) d $((s % 86400 / 3600)) h"
  elif [ "$s" -ge 3600 ]; then echo "$((s / 3600)) h $((s % 3600 / 60)) min"
  else echo "$((s / 60)) min"; fi
}

# token_line: the refresh token's expiry, from /healthz or else from the token file on the box.
token_line() {
  local left expires
  left=$(json_value seconds_left "$HEALTH_JSON")
  expires=$(json_value refresh_expires_at "$HEALTH_JSON")  # ISO 8601 in UTC: 2025-01-08T12:00:00+00:00
  [ -z "$expires" ] || expires="${expires:0:10} ${expires:11:5} UTC"
  if [ -z "$left" ] && [ "${BOX_TOKEN_CREATED:-none}" != none ] && [ "$BOX_TOKEN_CREATED" != - ]; then
    local end=$(( ${BOX_TOKEN_CREATED%.*} + REFRESH_TOKEN_LIFE_S ))
    left=$((end - $(date +%s)))
    expires=$(when "$end")
  fi
  if [ -z "$left" ]; then
    echo "Schwab token: unknown"
  elif [ "${left%.*}" -le 0 ]; then
    echo "Schwab refresh token EXPIRED at $expires: run 'streaming-service auth', then './deploy.sh token'"
  else
    echo "Schwab refresh token expires $expires (in $(duration "$left"))"
  fi
}

# --- Scripts run on the box ---------------------------------------------------------------------------
# Each is sent to `bash -s` with its settings as environment variables. The body is one { } group
# with stdin from /dev/null: bash parses it whole first, so no command in it can read the rest.
box_ready_script() {
  cat <<'BOX'
{
rc=0
timeout "$CLOUD_INIT_TIMEOUT" cloud-init status --wait >/dev/null 2>&1 || rc=$?
case $rc in
  0) ;;
  2) echo "warning: cloud-init finished with recoverable errors (sudo cloud-init status --long)" >&2 ;;
  124) echo "first-boot setup (cloud-init) still running after ${CLOUD_INIT_TIMEOUT}s" >&2; exit 1 ;;
  127) echo "warning: no cloud-init on this box; not waiting for it" >&2 ;;
  *) echo "first-boot setup (cloud-init) failed: $(cloud-init status 2>&1 | tr '\n' ' ')" >&2
     sudo -n tail -n 15 /var/log/cloud-init-output.log >&2 2>/dev/null
     exit 1 ;;
esac
docker info >/dev/null 2>&1 || { echo "Docker does not answer for $(id -un) (docker info failed)" >&2; exit 1; }
docker compose version >/dev/null 2>&1 || { echo "the docker compose plugin is missing" >&2; exit 1; }
[ -d "$REMOTE_DIR" ] || sudo -n install -d -o "$(id -u)" -g "$(id -g)" -m 750 "$REMOTE_DIR" || exit 1
mkdir -p "$REMOTE_DIR/data"
} </dev/null
BOX
}

# Prints "image ID|none", "token CREATED|- MTIME" or "token none none", "container STATUS RESTARTS HEALTH",
# "http CODE" (000: no answer) and "body JSON" of /healthz.
box_report_script() {
  cat <<'BOX'
{
cd "$DIR" || exit 1
echo "image $(docker image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || echo none)"
if sudo -n test -f "$TOKEN"; then
  created=$(sudo -n sed -n 's/.*"creation_timestamp": *\([0-9.]*\).*/\1/p' "$TOKEN" | head -n 1)
  echo "token ${created:--} $(sudo -n stat -c %Y "$TOKEN")"
else
  echo "token none none"
fi
id=$(docker compose ps -a -q "$SERVICE" 2>/dev/null | head -n 1)
if [ -n "$id" ]; then
  echo "container $(docker inspect --format '{{.State.Status}} {{.RestartCount}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$id")"
else
  echo "container missing 0 none"
fi
answer=$(curl -s --max-time 5 -w '\n%{http_code}' "http://127.0.0.1:$PORT/healthz")
echo "http ${answer##*$'\n'}"
echo "body $(printf '%s' "${answer%$'\n'*}" | tr -d '\n')"
} </dev/null
BOX
}

# Puts DIR/.token.new at DIR/TOKEN (mode 600), owned as the file it replaces or else as data/.
box_install_token_script() {
  cat <<'BOX'
{
set -e
cd "$DIR"
owner=$(sudo -n stat -c %u:%g "$TOKEN" 2>/dev/null || stat -c %u:%g data)
sudo -n install -m 600 -o "${owner%:*}" -g "${owner#*:}" .token.new "$TOKEN"
rm -f .token.new
} </dev/null
BOX
}

# --- Subcommands --------------------------------------------------------------------------------------
cmd_up() {
  if [ -z "$NO_BUILD" ]; then build_image; fi
  ensure_instance
  ensure_static_ip
  ensure_firewall
  use_ssh
  wait_for_box
  box_report
  ship_image
  say "copying .env (mode 600) and docker-compose.yml"
  put_file docker-compose.yml docker-compose.yml 644
  put_file .env .env 600
  sync_token
  start_service
  wait_healthy
  say "done: $INSTANCE_NAME at $STATIC_IP. './deploy.sh status', './deploy.sh logs -f', './deploy.sh tunnel'"
}

cmd_status() {
  load_instance || die "instance $INSTANCE_NAME does not exist in $REGION; './deploy.sh up' creates it"
  echo "instance   $INSTANCE_NAME ($REGION): $INSTANCE_STATE, $INSTANCE_BUNDLE, $INSTANCE_BLUEPRINT, $SSH_USER@$INSTANCE_IP"
  [ "$INSTANCE_STATE" = running ] || exit 1
  use_ssh
  box_report
  echo "container  $CONTAINER (health: $DOCKER_HEALTH, $RESTARTS restarts)"
  echo "healthz    HTTP $HTTP_CODE: ${HEALTH_STATE:-no answer}"
  if [ -n "$HEALTH_JSON" ]; then
    # the service's own reading of /healthz (tickers, spool, sink, token, stream), else the JSON itself
    local lines
    lines=$(remote "cd $REMOTE_DIR && docker compose exec -T $SERVICE streaming-service status" 2>/dev/null) || true
    sed 's/^/           /' <<<"${lines:-$HEALTH_JSON}"
  fi
  echo "token      $(token_line)"
  [ "$HTTP_CODE" = 200 ]
}

cmd_logs() {
  ssh_to_instance
  if [ -n "$FOLLOW" ]; then  # a terminal, so that Ctrl-C also ends the remote `logs -f`
    exec ssh -o RequestTTY="$(tty_wanted)" "${SSH_OPTS[@]}" "$TARGET" \
      "cd $REMOTE_DIR && docker compose logs --no-color --tail $LOG_TAIL -f $SERVICE"
  fi
  remote "cd $REMOTE_DIR && docker compose logs --no-color --tail $LOG_TAIL $SERVICE"
}

cmd_ssh() {
  ssh_to_instance
  if [ -n "$REMOTE_COMMAND" ]; then
    exec ssh -o RequestTTY="$(tty_wanted)" "${SSH_OPTS[@]}" "$TARGET" "cd $REMOTE_DIR && $REMOTE_COMMAND"
  fi
  exec ssh -o RequestTTY="$(tty_wanted)" "${SSH_OPTS[@]}" "$TARGET" "cd $REMOTE_DIR && exec \$SHELL -l"
}

cmd_restart() {
  ssh_to_instance
  say "restarting $SERVICE"
  remote "cd $REMOTE_DIR && if [ -n \"\$(docker compose ps -a -q $SERVICE)\" ]; then docker compose restart $SERVICE; fi &&
    docker compose up -d --no-build --pull never" || die "docker compose restart failed on the box (see above)"
  wait_healthy
}

cmd_down() {
  ssh_to_instance
  say "stopping $SERVICE (docker compose down); the instance and $REMOTE_DIR/data stay"
  remote "cd $REMOTE_DIR && docker compose down" || die "docker compose down failed on the box (see above)"
  say "stopped. './deploy.sh up' or './deploy.sh restart' starts it again"
}

cmd_destroy() {
  local has_instance="" has_ip="" attached=None row
  if load_instance; then has_instance=1; fi
  if row=$(aws_run lightsail get-static-ip --static-ip-name "$STATIC_IP_NAME" --output text \
      --query 'staticIp.[ipAddress,attachedTo]'); then
    has_ip=1
    attached=$(cut -f 2 <<<"$row")
  else
    aws_not_found || die "cannot read static IP $STATIC_IP_NAME: $(aws_error)"
  fi
  if [ -z "$has_instance$has_ip" ]; then
    say "nothing to destroy: no instance $INSTANCE_NAME and no static IP $STATIC_IP_NAME in $REGION"
    return
  fi
  if [ -z "$ASSUME_YES" ]; then
    printf '%s' "Delete instance $INSTANCE_NAME and release static IP $STATIC_IP_NAME in $REGION? Everything on" \
      " the instance is lost (spool, dead letters, any SQLite database). Type the instance name to confirm: " >&2
    local answer=""
    read -r answer || echo >&2
    [ "$answer" = "$INSTANCE_NAME" ] || die "not confirmed: nothing was deleted"
  fi
  if [ -n "$has_ip" ]; then
    if [ "$attached" != None ]; then
      aws_run lightsail detach-static-ip --static-ip-name "$STATIC_IP_NAME" >/dev/null ||
        die "cannot detach static IP $STATIC_IP_NAME: $(aws_error)"
    fi
    say "releasing static IP $STATIC_IP_NAME"
    aws_run lightsail release-static-ip --static-ip-name "$STATIC_IP_NAME" >/dev/null ||
      die "cannot release static IP $STATIC_IP_NAME: $(aws_error)"
  fi
  if [ -n "$has_instance" ]; then
    say "deleting instance $INSTANCE_NAME"
    aws_run lightsail delete-instance --instance-name "$INSTANCE_NAME" >/dev/null ||
      die "cannot delete instance $INSTANCE_NAME: $(aws_error)"
  fi
  rm -f "$KNOWN_HOSTS"
  say "destroyed"
}

cmd_token() {
  ssh_to_instance
  box_report
  sync_token force
  start_service
  wait_healthy
}

cmd_tunnel() {
  ssh_to_instance
  say "http://127.0.0.1:$TUNNEL_PORT/ is the instance's dashboard (and /healthz its health) while this runs (Ctrl-C ends it)"
  exec ssh -N -o ExitOnForwardFailure=yes -L "$TUNNEL_PORT:127.0.0.1:$BOX_HEALTH_PORT" "${SSH_OPTS[@]}" "$TARGET"
}

# --- Arguments ---------------------------------------------------------------------------------------
bad_usage() {
  printf '%s: %s\nsubcommands: %s (default up); options: --name --region --bundle --ssh-key --ssh-cidr --port --no-build --yes -f --help\n' \
    "$PROG" "$*" "$SUBCOMMANDS" >&2
  exit 2
}

main() {
  local command="" arg
  FOLLOW="" ASSUME_YES="" NO_BUILD="" REMOTE_COMMAND=""
  while [ $# -gt 0 ]; do
    arg=$1
    shift
    case $arg in
      -h | --help) usage; exit 0 ;;
      --name | --region | --bundle | --ssh-key | --ssh-cidr | --port)
        [ $# -gt 0 ] || bad_usage "$arg needs a value"
        case $arg in
          --name) INSTANCE_NAME=$1 ;;
          --region) REGION=$1 ;;
          --bundle) BUNDLE=$1 ;;
          --ssh-key) SSH_KEY=$1 ;;
          --ssh-cidr) SSH_CIDR=$1 ;;
          --port) TUNNEL_PORT=$1 ;;
        esac
        shift ;;
      -y | --yes) ASSUME_YES=1 ;;
      -f | --follow) FOLLOW=1 ;;
      --no-build) NO_BUILD=1 ;;
      -*) bad_usage "unknown option '$arg'" ;;
      *)
        if [ -z "$command" ] && [[ " $SUBCOMMANDS " == *" $arg "* ]]; then
          command=$arg
          if [ "$command" = ssh ]; then REMOTE_COMMAND="$*"; break; fi
        else
          bad_usage "unknown argument '$arg'"
        fi ;;
    esac
  done
  command=${command:-up}
  [ -z "$FOLLOW" ] || [ "$command" = logs ] || bad_usage "-f applies to logs only"
  [ -z "$ASSUME_YES" ] || [ "$command" = destroy ] || bad_usage "--yes applies to destroy only"
  [ -z "$NO_BUILD" ] || [ "$command" = up ] || bad_usage "--no-build applies to up only"

  local name
  for name in INSTANCE_NAME REGION; do
    [[ ${!name} =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || bad_usage "$name '${!name}' may hold letters, digits, . _ - only"
  done
  [[ $REMOTE_DIR =~ ^/[A-Za-z0-9._/-]+$ ]] || bad_usage "REMOTE_DIR '$REMOTE_DIR' must be an absolute path of letters, digits, . _ - /"
  [[ $TUNNEL_PORT =~ ^[0-9]+$ ]] || bad_usage "--port '$TUNNEL_PORT' is not a port number"
  for name in DEPLOY_STATE_TIMEOUT DEPLOY_IP_TIMEOUT DEPLOY_SSH_TIMEOUT DEPLOY_CLOUD_INIT_TIMEOUT \
    DEPLOY_HEALTH_TIMEOUT DEPLOY_SSH_CONNECT_TIMEOUT; do
    [[ ${!name} =~ ^[0-9]+$ ]] || bad_usage "$name '${!name}' is not a whole number of seconds"
  done
  if [ -n "$SSH_CIDR" ] && [ "$SSH_CIDR" != my-ip ] && ! [[ $SSH_CIDR =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}$ ]]; then
    bad_usage "--ssh-cidr '$SSH_CIDR' is neither an IPv4 CIDR such as 203.0.113.7/32 nor my-ip"
  fi
  SSH_KEY=${SSH_KEY:-$HOME/.ssh/LightsailDefaultKey-$REGION.pem}
  STATIC_IP_NAME=${STATIC_IP_NAME:-$INSTANCE_NAME-ip}
  KNOWN_HOSTS=${KNOWN_HOSTS:-$HOME/.ssh/known_hosts.lightsail-$REGION-$INSTANCE_NAME}
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  check_prerequisites "$command"
  "cmd_$command"
}

main "$@"
