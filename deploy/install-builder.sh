#!/usr/bin/env bash
# Installs the nix-edge-registry builder as a systemd service on Debian or Ubuntu (run as root):
#
#   sudo deploy/install-builder.sh [--dry-run] [--prefix DIR] [--no-start]
#
# What it does (safe to run again: an upgrade is the same command from a newer checkout):
#   1. checks the system: Debian/Ubuntu, systemd, Node.js 22 or 24 with npm (20 works, with a warning: it is
#      past end of life);
#   2. makes sure Nix 2.18 or later is installed (current nixpkgs refuses older Nix), and enables nix-daemon:
#      the service user is not root, so all its Nix work goes through the daemon.
#      - A Nix already installed (nix-build in /nix/var/nix/profiles/default/bin or on PATH) is kept if it is
#        2.18 or later. An older one stops the script, which says what to remove or upgrade (it removes nothing).
#      - Debian 13 and later (and testing/sid), Ubuntu 24.04 and later: the distribution's Nix (apt:
#        nix-setup-systemd, which brings nix-bin and the nix-daemon units).
#      - Debian 12, Ubuntu 22.04 and older, other Debian-like systems: their Nix is older than 2.18 (or
#        unknown), so the upstream multi-user installer (https://nixos.org/nix/install --daemon; curl and
#        xz-utils come from apt first), which installs into /nix/var/nix/profiles/default with nix-daemon units.
#      Nix's sandbox is turned on (sandbox = true in /etc/nix/nix.conf; Debian's package ships sandbox = false)
#      once a sandboxed test build through the daemon shows that it works on this host; where it does not (some
#      containers), the script warns and leaves it off.
#   3. creates the system user nix-builder (home /var/lib/nix-edge-registry) and lets it use the daemon
#      (group nix-users, and allowed-users in /etc/nix/nix.conf when that setting restricts users);
#   4. copies this project to PREFIX (default /opt/nix-edge-registry), owned by root, runs npm ci --omit=dev
#      there and builds the builder's JavaScript (npm run build:builder: build/builder-service.mjs, with esbuild,
#      a runtime dependency for that reason);
#   5. writes /etc/nix-edge-registry/builder.env with a freshly generated BUILDER_SECRET if the file is absent
#      (never overwrites it), and links /usr/local/bin/builder-service;
#   6. installs and enables builder-service.service, and starts (or restarts) it once builder.env passes
#      `builder-service --check`; otherwise it says what to fill in. Installs and enables builder-gc.timer, which
#      runs `builder-service --collect-garbage` daily (builder-gc.service).
#
# --dry-run prints every step that would change the system (and which way it gets Nix, and why), runs only the
# read-only checks, and changes nothing.
#
# For testing, with --dry-run only:
#   --os-release FILE   read FILE instead of /etc/os-release (which system this is)
#   --nix-build FILE    take FILE as the installed nix-build (its --version, and the package owning it);
#                       --nix-build none: as if no Nix were installed
#   --nix-conf FILE     read FILE instead of /etc/nix/nix.conf (the sandbox setting)
set -euo pipefail

PREFIX=/opt/nix-edge-registry
CONFIG_DIR=/etc/nix-edge-registry
ENV_FILE=$CONFIG_DIR/builder.env
STATE_DIR=/var/lib/nix-edge-registry
SERVICE_USER=nix-builder
UNIT=builder-service.service
DRY_RUN=0
START=1
OS_RELEASE=/etc/os-release
NIX_BUILD_PROBE=
SOURCE_DIR=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
# Current nixpkgs needs Nix 2.18 or later (its lib/minver.nix; its default.nix aborts on older Nix).
NIX_MIN_MAJOR=2
NIX_MIN_MINOR=18
NIX_MIN=$NIX_MIN_MAJOR.$NIX_MIN_MINOR
NIX_PROFILE_BIN=/nix/var/nix/profiles/default/bin
NIX_INSTALLER_URL=https://nixos.org/nix/install
NIX_CONF=/etc/nix/nix.conf

usage() {
  # The comment block at the top of this file.
  sed -n '2,/^[^#]/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --prefix) PREFIX=${2:?--prefix needs a folder}; shift ;;
    --prefix=*) PREFIX=${1#--prefix=} ;;
    --no-start) START=0 ;;
    --os-release) OS_RELEASE=${2:?--os-release needs a file}; TEST_OPTION=--os-release; shift ;;
    --os-release=*) OS_RELEASE=${1#--os-release=}; TEST_OPTION=--os-release ;;
    --nix-build) NIX_BUILD_PROBE=${2:?--nix-build needs a file or none}; TEST_OPTION=--nix-build; shift ;;
    --nix-build=*) NIX_BUILD_PROBE=${1#--nix-build=}; TEST_OPTION=--nix-build ;;
    --nix-conf) NIX_CONF=${2:?--nix-conf needs a file}; TEST_OPTION=--nix-conf; shift ;;
    --nix-conf=*) NIX_CONF=${1#--nix-conf=}; TEST_OPTION=--nix-conf ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install-builder.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ -n "${TEST_OPTION:-}" ] && [ "$DRY_RUN" = 0 ]; then
  echo "install-builder.sh: $TEST_OPTION is for testing and works only with --dry-run" >&2
  exit 2
fi

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
if [ -r "$OS_RELEASE" ]; then
  ID='' ID_LIKE='' VERSION_ID='' PRETTY_NAME=''
  # shellcheck disable=SC1090
  . "$OS_RELEASE"
  case " ${ID:-} ${ID_LIKE:-} " in
    *" debian "*|*" ubuntu "*) say "system: ${PRETTY_NAME:-$ID}" ;;
    *) die "this script is for Debian and Ubuntu (found ${PRETTY_NAME:-${ID:-unknown}}); on NixOS use the module deploy/nixos/builder.nix (deploy/README.md: The builder on NixOS)" ;;
  esac
else
  die "$OS_RELEASE is missing: cannot tell which system this is"
fi
command -v systemctl >/dev/null 2>&1 || die "systemd (systemctl) is needed to run the service"
if ! command -v node >/dev/null 2>&1; then
  die "Node.js 22 or 24 is needed and node is not installed. Debian 12's nodejs package is 18: install 22 or 24 from NodeSource (https://github.com/nodesource/distributions) or your usual source, then run this again"
fi
node_version=$(node -p process.versions.node)
node_major=${node_version%%.*}
if [ "$node_major" -lt 20 ]; then
  die "Node.js $node_version is too old: 22 or 24 is needed (Debian 12's nodejs package is 18; NodeSource has 22 and 24)"
fi
# The supported lines are the maintained LTS ones, 22 and 24. Older ones still run the builder but get no
# security fixes, so they are kept with a warning rather than refused.
case "$node_major" in
  20) warn "Node.js $node_version works, but Node.js 20 reached end of life on 2026-04-30 (no more security fixes): install Node.js 22 or 24 (NodeSource has both) and run this script again" ;;
  21|23) warn "Node.js $node_version works, but Node.js $node_major is not an LTS line and is past end of life: install Node.js 22 or 24 (NodeSource has both) and run this script again" ;;
esac
command -v npm >/dev/null 2>&1 || die "npm is missing (it comes with Node.js from NodeSource; on Debian: apt-get install npm)"
say "node $(node --version), npm $(npm --version)"
if [ ! -f "$SOURCE_DIR/package.json" ] || [ ! -f "$SOURCE_DIR/builder-service/main.ts" ]; then
  die "$SOURCE_DIR does not look like the nix-edge-registry project (run the script from its deploy/ folder)"
fi

# --- 2. Nix and its daemon -------------------------------------------------------------------------------------
say "Nix"

# Which way this system gets Nix when none is installed: nix_way=apt (the distribution's Nix is new enough) or
# nix_way=upstream (the upstream multi-user installer), and why (nix_why).
system_name=${ID:-unknown}
if [ -n "${VERSION_ID:-}" ]; then system_name="$system_name $VERSION_ID"; fi
case "${ID:-}" in debian) system_name="Debian${system_name#debian}" ;; ubuntu) system_name="Ubuntu${system_name#ubuntu}" ;; esac
distro_nix=
case "${ID:-}:${VERSION_ID:-}" in
  debian:11) distro_nix=2.3.7 ;;
  debian:12) distro_nix=2.8.0 ;;
  debian:13) distro_nix=2.26.3 ;;
  ubuntu:22.04) distro_nix=2.6.0 ;;
  ubuntu:24.04) distro_nix=2.18.1 ;;
esac
nix_way=upstream
needs="current nixpkgs needs $NIX_MIN or later"
if [ "${ID:-}" = debian ] && [ -z "${VERSION_ID:-}" ]; then
  nix_way=apt
  nix_why="Debian testing/unstable (${PRETTY_NAME:-no VERSION_ID}) ships Nix $NIX_MIN or later, which current nixpkgs needs"
elif { [ "${ID:-}" = debian ] && [[ ${VERSION_ID:-} =~ ^[0-9]+$ ]] && [ "$VERSION_ID" -ge 13 ]; } ||
  { [ "${ID:-}" = ubuntu ] && [[ ${VERSION_ID:-} =~ ^([0-9]+)\.([0-9]+)$ ]] &&
    [ $((10#${BASH_REMATCH[1]} * 100 + 10#${BASH_REMATCH[2]})) -ge 2404 ]; }; then
  nix_way=apt
  if [ -n "$distro_nix" ]; then
    nix_why="$system_name ships Nix $distro_nix ($needs)"
  else
    nix_why="$system_name ships Nix $NIX_MIN or later, which current nixpkgs needs"
  fi
elif [ -n "$distro_nix" ]; then
  nix_why="$system_name ships Nix $distro_nix, older than the $NIX_MIN current nixpkgs needs"
elif [ "${ID:-}" = debian ] && [ -n "${VERSION_ID:-}" ]; then
  nix_why="$system_name ships no Nix $NIX_MIN or later, which current nixpkgs needs (Debian 13 and later do)"
elif [ "${ID:-}" = ubuntu ] && [ -n "${VERSION_ID:-}" ]; then
  nix_why="$system_name ships no Nix $NIX_MIN or later, which current nixpkgs needs (Ubuntu 24.04 and later do)"
elif [ "${ID:-}" = debian ] || [ "${ID:-}" = ubuntu ]; then
  nix_why="${PRETTY_NAME:-$ID} does not say its version (no VERSION_ID), so which Nix it ships is unknown ($needs)"
else
  nix_why="${PRETTY_NAME:-$system_name} is Debian-like but not Debian or Ubuntu, so which Nix it ships is unknown ($needs)"
fi
if [ "$nix_way" = apt ]; then
  nix_why="$nix_why: using the distribution's Nix (apt: nix-setup-systemd, which brings nix-bin and the nix-daemon units)"
else
  nix_why="$nix_why: using the upstream multi-user installer ($NIX_INSTALLER_URL --daemon)"
fi

# The installed Nix, as the service would find it (its PATH puts the upstream profile before /usr/bin):
# nix_build (empty when none), nix_version, nix_package (the Debian package that owns it, if any).
probe_nix() {
  nix_build='' nix_version='' nix_package=''
  if [ -n "$NIX_BUILD_PROBE" ]; then
    [ "$NIX_BUILD_PROBE" = none ] && return 0
    nix_build=$NIX_BUILD_PROBE
  elif [ -x "$NIX_PROFILE_BIN/nix-build" ]; then
    nix_build=$NIX_PROFILE_BIN/nix-build
  elif command -v nix-build >/dev/null 2>&1; then
    nix_build=$(command -v nix-build)
  else
    return 0
  fi
  local out
  out=$("$nix_build" --version 2>&1 | head -n 1) || true
  nix_version=$(printf '%s\n' "$out" | grep -Eo '[0-9]+\.[0-9]+(\.[0-9]+)?' | head -n 1) || true
  [ -n "$nix_version" ] || die "cannot tell which Nix $nix_build is (its --version said: ${out:-nothing}); fix or remove it, then run this again"
  case "$nix_build" in
    /nix/*) ;;
    *)
      if command -v dpkg-query >/dev/null 2>&1; then
        nix_package=$( { dpkg-query -S "$nix_build" 2>/dev/null || dpkg-query -S "$(readlink -f "$nix_build")" 2>/dev/null; } | head -n 1 | cut -d: -f1) || true
      fi
      ;;
  esac
}
# True when the version in $1 is NIX_MIN or later.
nix_new_enough() {
  local major=${1%%.*} rest=${1#*.}
  local minor=${rest%%.*}
  [ "$major" -gt "$NIX_MIN_MAJOR" ] || { [ "$major" -eq "$NIX_MIN_MAJOR" ] && [ "$minor" -ge "$NIX_MIN_MINOR" ]; }
}
# Debian's nix-setup-systemd made the build group nixbld (and users nixbld1-10) with ids of its own, and removing
# the package leaves them; the upstream installer stops on a nixbld group whose id is not its 30000.
nixbld_cleanup() {
  local gid
  gid=$(getent group nixbld 2>/dev/null | cut -d: -f3) || true
  if [ -n "$gid" ] && [ "$gid" != 30000 ]; then
    # shellcheck disable=SC2016
    printf '\n    for user in $(getent group nixbld | cut -d: -f4 | tr , " "); do userdel "$user"; done; groupdel nixbld'
  fi
}

probe_nix
installed_nix=0
if [ -n "$nix_build" ] && nix_new_enough "$nix_version"; then
  say "Nix $nix_version is installed ($nix_build${nix_package:+, from the package $nix_package}): $NIX_MIN or later, kept"
  if [ -n "$nix_package" ] && ! dpkg -s nix-setup-systemd >/dev/null 2>&1; then
    # Debian's nix-bin alone has no daemon units; nix-setup-systemd adds nix-daemon.socket and nix-daemon.service.
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nix-setup-systemd
  fi
elif [ -n "$nix_build" ] && [ -n "$nix_package" ] && [ "$nix_way" = apt ]; then
  say "$nix_why"
  say "Nix $nix_version from the package $nix_package is older than $NIX_MIN: upgrading it from the distribution"
  run apt-get update -q
  run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nix-setup-systemd nix-bin
  installed_nix=1
elif [ -n "$nix_build" ] && [ -n "$nix_package" ]; then
  say "$nix_why"
  die "Nix $nix_version is installed from the distribution's packages ($nix_package: $nix_build), and current nixpkgs needs Nix $NIX_MIN or later: every nixpkgs build would fail with it. This script does not remove it for you. Remove it, then run this script again (it then installs Nix with the upstream multi-user installer):
    apt-get remove --purge nix-setup-systemd nix-bin$(nixbld_cleanup)
  If the upstream installer then refuses to run over what the old Nix left in /nix (\"relics of a previous installation\"), move that aside and run this script again:
    mv /nix /nix.old      # or rm -rf /nix: it holds only what the old Nix built and downloaded"
elif [ -n "$nix_build" ]; then
  major_minor=${nix_version%.*}
  upgrade="nix upgrade-nix"
  if [ "${major_minor%%.*}" -gt 2 ] || [ "${major_minor#*.}" -ge 4 ]; then upgrade="nix --extra-experimental-features nix-command upgrade-nix"; fi
  die "Nix $nix_version is installed at $nix_build, not from the distribution's packages (the upstream installer's, or another source), and current nixpkgs needs Nix $NIX_MIN or later. Upgrade it as root, then run this script again:
    $(dirname "$nix_build")/$upgrade
    systemctl daemon-reload && systemctl restart nix-daemon.service
  (or uninstall it as its installer documents, and this script installs a current one)"
elif [ "$nix_way" = apt ]; then
  say "$nix_why"
  run apt-get update -q
  run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nix-setup-systemd
  installed_nix=1
else
  say "$nix_why"
  cleanup=$(nixbld_cleanup)
  if [ -n "$cleanup" ]; then
    die "the build group nixbld is left from the distribution's Nix package, with an id the upstream installer does not accept (it wants 30000). Remove it and its users, then run this script again:$cleanup"
  fi
  run apt-get update -q
  run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q curl xz-utils
  installer_dir="${TMPDIR:-/tmp}/nix-install.XXXXXX"
  [ "$DRY_RUN" = 1 ] || installer_dir=$(mktemp -d "$installer_dir")
  run curl -fsSL -o "$installer_dir/install" "$NIX_INSTALLER_URL" ||
    { rm -rf "$installer_dir"; die "could not download the Nix installer from $NIX_INSTALLER_URL"; }
  run sh "$installer_dir/install" --daemon --yes ||
    { rm -rf "$installer_dir"; die "the upstream Nix installer failed: see its output above"; }
  [ "$DRY_RUN" = 1 ] || rm -rf "$installer_dir"
  installed_nix=1
fi
if [ "$installed_nix" = 1 ]; then
  if [ "$DRY_RUN" = 1 ]; then
    printf '    would check: the installed nix-build (%s first, then PATH) is Nix %s or later\n' "$NIX_PROFILE_BIN" "$NIX_MIN"
  else
    NIX_BUILD_PROBE=''
    probe_nix
    [ -n "$nix_build" ] || die "Nix was installed but no nix-build is found (neither in $NIX_PROFILE_BIN nor on PATH): see the output above"
    nix_new_enough "$nix_version" || die "the installed Nix is $nix_version ($nix_build), older than the $NIX_MIN current nixpkgs needs: the builder would fail every nixpkgs build"
    say "Nix $nix_version installed ($nix_build)"
  fi
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

# Nix's sandbox: builds of nixpkgs then see neither the network (except fixed-output fetches) nor the host's
# files, only their declared inputs. Nix's default on Linux is on; Debian's nix.conf turns it off.
sandbox_setting=
if [ -f "$NIX_CONF" ]; then
  sandbox_setting=$(sed -n -E 's/^[[:space:]]*sandbox[[:space:]]*=[[:space:]]*([a-z]+)[[:space:]]*$/\1/p' "$NIX_CONF" | tail -n 1)
elif [ "$DRY_RUN" = 1 ] && [ "$installed_nix" = 1 ] && [ "$nix_way" = apt ]; then
  sandbox_setting=false # what the distribution's nix.conf, not installed in a dry run, will say
  sandbox_source="the distribution's nix.conf will say sandbox = false"
fi
case "${sandbox_setting:-default}" in
  true) say "Nix's sandbox is on (sandbox = true in $NIX_CONF)" ;;
  default) say "Nix's sandbox is on (the default: $NIX_CONF does not set it)" ;;
  *)
    if [ "$DRY_RUN" = 1 ]; then
      printf '    would check: a one-step build with --option sandbox true through nix-daemon (Nix'"'"'s sandbox works here)\n'
      printf '    would set: sandbox = true in %s (%s), then restart nix-daemon\n' "$NIX_CONF" "${sandbox_source:-it says sandbox = $sandbox_setting}"
    else
      # builtin:buildenv needs no shell or store path, so the build tests the sandbox itself; currentTime makes
      # it a new derivation on every run.
      check_nix=$(mktemp --suffix=.nix)
      echo 'derivation { name = "sandbox-check"; system = builtins.currentSystem; builder = "builtin:buildenv"; derivations = ""; manifest = "none"; nonce = toString builtins.currentTime; }' > "$check_nix"
      if sandbox_out=$(NIX_REMOTE=daemon "$(dirname "$nix_build")/nix-build" --no-out-link --option sandbox true \
        --option sandbox-fallback false --option substituters '' "$check_nix" 2>&1); then
        rm -f "$check_nix"
        say "Nix's sandbox works here: setting sandbox = true in $NIX_CONF (it said sandbox = $sandbox_setting)"
        sed -i -E 's/^([[:space:]]*sandbox[[:space:]]*=).*$/\1 true/' "$NIX_CONF"
        systemctl restart nix-daemon.service
      else
        rm -f "$check_nix"
        warn "Nix's sandbox does not work on this host, so it stays off (sandbox = $sandbox_setting in $NIX_CONF) and package builds can see the network and the host's files. A sandboxed test build said: $(printf '%s\n' "$sandbox_out" | grep -m1 'error' || printf '%s\n' "$sandbox_out" | tail -n 1). A VM (not a container) with user and mount namespaces allows it."
      fi
    fi
    ;;
esac

# --- 3. the service user ----------------------------------------------------------------------------------------
say "service user $SERVICE_USER"
if id "$SERVICE_USER" >/dev/null 2>&1; then
  say "user $SERVICE_USER exists"
else
  run useradd --system --home-dir "$STATE_DIR" --no-create-home --shell /usr/sbin/nologin \
    --comment "nix-edge-registry builder" --user-group "$SERVICE_USER"
fi
# Debian's nix-daemon socket is open to the nix-users group only (the upstream installer's is open to all users).
if getent group nix-users >/dev/null 2>&1 || { [ "$DRY_RUN" = 1 ] && [ "$installed_nix" = 1 ] && [ "$nix_way" = apt ]; }; then
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
  run sh -c "cd '$PREFIX' && npm ci --omit=dev --no-audit --no-fund && npm run --silent build:builder"
else
  staging="$PREFIX.new"
  run rm -rf "$staging"
  run install -d -m 0755 "$staging"
  # The code only: no dependencies, local state, build output or the offline package sets of the tests.
  run sh -c "tar -C '$SOURCE_DIR' --exclude=./node_modules --exclude=./.git --exclude=./.wrangler --exclude=./.data --exclude=./dist --exclude=./build --exclude=./package-sets -cf - . | tar -C '$staging' -xf -"
  run sh -c "cd '$staging' && npm ci --omit=dev --no-audit --no-fund && npm run --silent build:builder"
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
# Spooled layers, the journal of unfinished build jobs, and Nix's download cache (the service's StateDirectory).
BUILDER_DATA_DIR=$STATE_DIR

# Blobs, manifests and image records go straight into the worker's R2 bucket through R2's S3 API.
# https://<account id>.r2.cloudflarestorage.com (R2 > Overview > Account details > S3 API, without the bucket)
S3_ENDPOINT=
S3_BUCKET=nix-edge-registry
# An R2 API token with Object Read & Write on the bucket: its Access Key ID and Secret Access Key.
S3_ACCESS_KEY_ID=
S3_SECRET_ACCESS_KEY=

# Packages: the channel that \`latest\` follows.
NIXERY_CHANNEL=nixos-unstable
NIX_TIMEOUT=600
ENV
    chown "root:$SERVICE_USER" "$ENV_FILE"
    chmod 0640 "$ENV_FILE"
    say "wrote $ENV_FILE with a new BUILDER_SECRET"
  fi
fi

# --- 6. the units ---------------------------------------------------------------------------------------------------
# The service, and the daily garbage collection of the bucket (builder-gc.service, started by builder-gc.timer).
for unit in "$UNIT" builder-gc.service builder-gc.timer; do
  say "systemd unit $unit"
  unit_source="$SOURCE_DIR/deploy/$unit"
  if [ "$PREFIX" != /opt/nix-edge-registry ]; then
    if [ "$DRY_RUN" = 1 ]; then
      printf '    would write: /etc/systemd/system/%s with /opt/nix-edge-registry replaced by %s\n' "$unit" "$PREFIX"
    else
      sed "s|/opt/nix-edge-registry|$PREFIX|g" "$unit_source" > "/etc/systemd/system/$unit"
    fi
  else
    run install -m 0644 "$unit_source" "/etc/systemd/system/$unit"
  fi
done
run systemctl daemon-reload
run systemctl enable "$UNIT"
run systemctl enable builder-gc.timer

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
