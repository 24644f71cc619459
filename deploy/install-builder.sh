#!/usr/bin/env bash
# Installs the nix-edge-registry builder as a systemd service on Debian 12 or Ubuntu 22.04+ (run as root):
#
#   sudo deploy/install-builder.sh [--dry-run] [--prefix DIR] [--no-start]
#
# What it does (safe to run again: an upgrade is the same command from a newer checkout):
#   1. checks the system: Debian/Ubuntu, systemd, Node.js 20 or later with npm;
#   2. installs Nix from the distribution (apt: nix-setup-systemd, which brings nix-bin and nix-daemon.socket)
#      unless a Nix with nix-daemon is already there (e.g. the upstream multi-user installer's), and enables
#      nix-daemon: the service user is not root, so all its Nix work goes through the daemon;
#   3. creates the system user nix-builder (home /var/lib/nix-edge-registry) and lets it use the daemon
#      (group nix-users, and allowed-users in /etc/nix/nix.conf when that setting restricts users);
#   4. copies this project to PREFIX (default /opt/nix-edge-registry), owned by root, and runs npm ci --omit=dev
#      there (tsx, which runs the TypeScript, is a runtime dependency);
#   5. writes /etc/nix-edge-registry/builder.env with a freshly generated BUILDER_SECRET if the file is absent
#      (never overwrites it), and links /usr/local/bin/builder-service;
#   6. installs and enables builder-service.service, and starts (or restarts) it once builder.env passes
#      `builder-service --check`; otherwise it says what to fill in.
#
# --dry-run prints every step that would change the system, runs only the read-only checks, and changes nothing.
set -euo pipefail

PREFIX=/opt/nix-edge-registry
CONFIG_DIR=/etc/nix-edge-registry
ENV_FILE=$CONFIG_DIR/builder.env
STATE_DIR=/var/lib/nix-edge-registry
SERVICE_USER=nix-builder
UNIT=builder-service.service
DRY_RUN=0
START=1
SOURCE_DIR=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)

usage() {
  sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --prefix) PREFIX=${2:?--prefix needs a folder}; shift ;;
    --prefix=*) PREFIX=${1#--prefix=} ;;
    --no-start) START=0 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install-builder.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

say() { printf '==> %s\n' "$*"; }
warn() { printf 'install-builder.sh: warning: %s\n' "$*" >&2; }
die() { printf 'install-builder.sh: %s\n' "$*" >&2; exit 1; }
# Runs a command that changes the system, or just shows it with --dry-run.
run() {
  if [ "$DRY_RUN" = 1 ]; then
    printf '    would run: %s\n' "$*"
  else
    "$@"
  fi
}

# --- 1. the system --------------------------------------------------------------------------------------------
say "checking the system"
if [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then die "run as root (sudo $0), or with --dry-run to see the steps"; fi
if [ -r /etc/os-release ]; then
  # shellcheck disable=SC1091
  . /etc/os-release
  case " ${ID:-} ${ID_LIKE:-} " in
    *" debian "*|*" ubuntu "*) say "system: ${PRETTY_NAME:-$ID}" ;;
    *) die "this script is for Debian and Ubuntu (found ${PRETTY_NAME:-${ID:-unknown}}); on NixOS use the module in the README's Deployment section" ;;
  esac
else
  die "/etc/os-release is missing: cannot tell which system this is"
fi
command -v systemctl >/dev/null 2>&1 || die "systemd (systemctl) is needed to run the service"
if ! command -v node >/dev/null 2>&1; then
  die "Node.js 20 or later is needed and node is not installed. Debian 12's nodejs package is 18: install 20 or 22 from NodeSource (https://github.com/nodesource/distributions) or your usual source, then run this again"
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  die "Node.js $(node --version) is too old: 20 or later is needed (Debian 12's nodejs package is 18; NodeSource has 20 and 22)"
fi
command -v npm >/dev/null 2>&1 || die "npm is missing (it comes with Node.js from NodeSource; on Debian: apt-get install npm)"
say "node $(node --version), npm $(npm --version)"
if [ ! -f "$SOURCE_DIR/package.json" ] || [ ! -f "$SOURCE_DIR/builder-service/main.ts" ]; then
  die "$SOURCE_DIR does not look like the nix-edge-registry project (run the script from its deploy/ folder)"
fi

# --- 2. Nix and its daemon -------------------------------------------------------------------------------------
say "Nix"
if command -v nix-daemon >/dev/null 2>&1 || [ -x /nix/var/nix/profiles/default/bin/nix-daemon ]; then
  say "Nix is installed: $( (command -v nix-build >/dev/null && nix-build --version) || /nix/var/nix/profiles/default/bin/nix-build --version)"
  if [ -x /usr/bin/nix-daemon ] && ! dpkg -s nix-setup-systemd >/dev/null 2>&1; then
    # Debian's nix-bin alone has no daemon units; nix-setup-systemd adds nix-daemon.socket and nix-daemon.service.
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nix-setup-systemd
  fi
else
  say "installing Nix from the distribution (nix-setup-systemd brings nix-bin and the nix-daemon units)"
  say "(to use the upstream installer instead, install it in multi-user mode first; this script then keeps it)"
  run apt-get update -q
  run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nix-setup-systemd
fi
# git: the builder keeps a mirror of the package-set repository when NIXERY_PKGS_REPO is set.
if ! command -v git >/dev/null 2>&1; then
  say "installing git (for NIXERY_PKGS_REPO package sets)"
  run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q git
fi
unit_file() {
  for dir in /etc/systemd/system /lib/systemd/system /usr/lib/systemd/system; do
    [ -f "$dir/$1" ] && return 0
  done
  return 1
}
if unit_file nix-daemon.socket; then
  run systemctl enable --now nix-daemon.socket
elif unit_file nix-daemon.service; then
  run systemctl enable --now nix-daemon.service
elif [ "$DRY_RUN" = 1 ]; then
  printf '    would run: systemctl enable --now nix-daemon.socket\n'
else
  die "Nix is installed but no nix-daemon unit was found; the builder's user needs nix-daemon (apt-get install nix-setup-systemd, or the upstream installer in multi-user mode)"
fi

# --- 3. the service user ----------------------------------------------------------------------------------------
say "service user $SERVICE_USER"
if id "$SERVICE_USER" >/dev/null 2>&1; then
  say "user $SERVICE_USER exists"
else
  run useradd --system --home-dir "$STATE_DIR" --no-create-home --shell /usr/sbin/nologin \
    --comment "nix-edge-registry builder" --user-group "$SERVICE_USER"
fi
# Debian's nix-daemon socket is open to the nix-users group only.
if getent group nix-users >/dev/null 2>&1 || [ "$DRY_RUN" = 1 ]; then
  run usermod --append --groups nix-users "$SERVICE_USER"
fi
if [ -f /etc/nix/nix.conf ] && grep -Eq '^[[:space:]]*allowed-users[[:space:]]*=' /etc/nix/nix.conf; then
  allowed=$(grep -E '^[[:space:]]*allowed-users[[:space:]]*=' /etc/nix/nix.conf | tail -n 1 | cut -d= -f2-)
  case " $allowed " in
    *" * "*|*" $SERVICE_USER "*|*" @nix-users "*) say "nix.conf allowed-users already lets $SERVICE_USER in" ;;
    *)
      say "adding $SERVICE_USER to allowed-users in /etc/nix/nix.conf"
      run sed -i -E "s/^([[:space:]]*allowed-users[[:space:]]*=.*)$/\\1 $SERVICE_USER/" /etc/nix/nix.conf
      run systemctl restart nix-daemon.service
      ;;
  esac
fi
run install -d -o "$SERVICE_USER" -g "$SERVICE_USER" -m 0750 "$STATE_DIR"

# --- 4. the project -------------------------------------------------------------------------------------------
say "installing the project from $SOURCE_DIR into $PREFIX"
if [ "$SOURCE_DIR" = "$PREFIX" ]; then
  say "already running from $PREFIX: refreshing dependencies only"
  run sh -c "cd '$PREFIX' && npm ci --omit=dev --no-audit --no-fund"
else
  staging="$PREFIX.new"
  run rm -rf "$staging"
  run install -d -m 0755 "$staging"
  # The code only: no dependencies, local state or build output.
  run sh -c "tar -C '$SOURCE_DIR' --exclude=./node_modules --exclude=./.git --exclude=./.wrangler --exclude=./.data --exclude=./dist -cf - . | tar -C '$staging' -xf -"
  run sh -c "cd '$staging' && npm ci --omit=dev --no-audit --no-fund"
  run chown -R root:root "$staging"
  run chmod -R go-w "$staging"
  # Swap in the new tree in one step (the running service keeps its files until it restarts).
  if [ -e "$PREFIX" ] || [ "$DRY_RUN" = 1 ]; then run rm -rf "$PREFIX.old"; fi
  if [ -e "$PREFIX" ]; then run mv "$PREFIX" "$PREFIX.old"; fi
  run mv "$staging" "$PREFIX"
  run rm -rf "$PREFIX.old"
fi
run ln -sf "$PREFIX/deploy/builder-service" /usr/local/bin/builder-service

# --- 5. settings -------------------------------------------------------------------------------------------------
say "settings in $ENV_FILE"
if [ -f "$ENV_FILE" ]; then
  say "$ENV_FILE exists: kept as it is"
else
  if [ "$DRY_RUN" = 1 ]; then
    printf '    would write: %s (mode 0640, root:%s) with a new random BUILDER_SECRET\n' "$ENV_FILE" "$SERVICE_USER"
  else
    secret=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
    install -d -m 0755 "$CONFIG_DIR"
    (umask 077 && : > "$ENV_FILE")
    cat > "$ENV_FILE" <<ENV
# nix-edge-registry builder settings (systemd EnvironmentFile: KEY=value, no quotes needed).
# Every setting: builder-service --help, or the configuration table in $PREFIX/README.md.

# Shared with the worker: npx wrangler secret put BUILDER_SECRET (paste this same value).
BUILDER_SECRET=$secret

# Where the builder listens. Keep 127.0.0.1 behind a TLS reverse proxy or a Cloudflare Tunnel
# (the worker can't fetch a bare IP address); 0.0.0.0 listens on every interface.
BUILDER_HOST=127.0.0.1
BUILDER_PORT=8788
# Spooled layers and Nix's download cache (the service's StateDirectory).
BUILDER_DATA_DIR=$STATE_DIR

# Blobs go straight into the worker's R2 bucket through R2's S3 API.
BUILDER_STORE=s3
# https://<account id>.r2.cloudflarestorage.com (R2 > Overview > Account details > S3 API, without the bucket)
S3_ENDPOINT=
S3_BUCKET=nix-edge-registry
# An R2 API token with Object Read & Write on the bucket: its Access Key ID and Secret Access Key.
S3_ACCESS_KEY_ID=
S3_SECRET_ACCESS_KEY=

# Packages: the channel that \`latest\` follows.
NIXERY_CHANNEL=nixos-unstable
NIX_TIMEOUT_SECONDS=600
ENV
    chown "root:$SERVICE_USER" "$ENV_FILE"
    chmod 0640 "$ENV_FILE"
    say "wrote $ENV_FILE with a new BUILDER_SECRET"
  fi
fi

# --- 6. the unit ----------------------------------------------------------------------------------------------------
say "systemd unit $UNIT"
unit_source="$SOURCE_DIR/deploy/$UNIT"
if [ "$PREFIX" != /opt/nix-edge-registry ]; then
  if [ "$DRY_RUN" = 1 ]; then
    printf '    would write: /etc/systemd/system/%s with /opt/nix-edge-registry replaced by %s\n' "$UNIT" "$PREFIX"
  else
    sed "s|/opt/nix-edge-registry|$PREFIX|g" "$unit_source" > "/etc/systemd/system/$UNIT"
  fi
else
  run install -m 0644 "$unit_source" "/etc/systemd/system/$UNIT"
fi
run systemctl daemon-reload
run systemctl enable "$UNIT"

if [ "$START" = 0 ]; then
  say "not starting (--no-start): systemctl start $UNIT when ready"
  exit 0
fi
if [ "$DRY_RUN" = 1 ]; then
  printf '    would run: builder-service --check as %s with %s, then systemctl restart %s\n' "$SERVICE_USER" "$ENV_FILE" "$UNIT"
  say "dry run: nothing was changed"
  exit 0
fi
check_output=$(setpriv --reuid="$SERVICE_USER" --regid="$SERVICE_USER" --init-groups \
  env -i PATH="/nix/var/nix/profiles/default/bin:/usr/local/bin:/usr/bin:/bin" HOME="$STATE_DIR" NIX_REMOTE=daemon \
  BUILDER_DATA_DIR="$STATE_DIR" sh -c "set -a; . '$ENV_FILE'; set +a; exec '$PREFIX/deploy/builder-service' --check" 2>&1) && checked=0 || checked=$?
if [ "$checked" = 0 ]; then
  printf '%s\n' "$check_output"
  run systemctl restart "$UNIT"
  port=$(sed -n 's/^BUILDER_PORT=//p' "$ENV_FILE" | tail -n 1)
  for _ in $(seq 1 30); do
    if node -e 'fetch(process.argv[1]).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))' \
      "http://127.0.0.1:${port:-8788}/ready" >/dev/null 2>&1; then
      say "builder-service is running and ready: journalctl -u $UNIT -f shows its JSON log"
      exit 0
    fi
    sleep 1
  done
  warn "builder-service did not report ready within 30 s: systemctl status $UNIT; journalctl -u $UNIT"
  exit 1
fi
printf '%s\n' "$check_output" >&2
say "builder-service is installed and enabled but not started: fix the settings above in $ENV_FILE, then"
say "  systemctl restart $UNIT"
