#!/usr/bin/env bash
# Installs another system's static busybox for the offline package set (package-sets/test-pkgs), so that it can
# build images for that system too: `fetch-foreign-busybox.sh [aarch64-linux]` (as root, Debian/Ubuntu).
#
# It downloads Debian's busybox-static package for that architecture with apt, using package lists of its
# own in a temporary folder: the machine's apt configuration is not changed (no dpkg --add-architecture)
# and nothing is installed through dpkg. The binary goes to /usr/local/lib/nix-test-pkgs/<system>/busybox,
# where package-sets/test-pkgs/default.nix looks for it. Nix then also needs `extra-platforms = <system>` to build
# these derivations on this host (their builders are the host's busybox; only the files are foreign).
set -euo pipefail

system=${1:-aarch64-linux}
case $system in
  aarch64-linux) arch=arm64 ;;
  x86_64-linux) arch=amd64 ;;
  *) echo "fetch-foreign-busybox.sh: unknown system $system (aarch64-linux or x86_64-linux)" >&2; exit 2 ;;
esac
target=/usr/local/lib/nix-test-pkgs/$system

if [ -x "$target/busybox" ]; then
  echo "fetch-foreign-busybox.sh: $target/busybox is already there"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
chmod -R a+rwx "$work" # apt's download user (_apt) writes here
apt_options=(
  -q
  -o "APT::Architecture=$arch"
  -o "APT::Architectures::=$arch"
  -o "Dir::State::Lists=$work/lists"
  -o "Dir::Cache=$work/cache"
  -o "Dir::State::status=/dev/null"
)
apt-get "${apt_options[@]}" update >/dev/null
(cd "$work" && apt-get "${apt_options[@]}" download "busybox-static:$arch" >/dev/null)
deb=$(ls "$work"/busybox-static_*_"$arch".deb)
dpkg-deb -x "$deb" "$work/root"
binary=$work/root/bin/busybox
[ -f "$binary" ] || binary=$work/root/usr/bin/busybox
mkdir -p "$target"
install -m 0555 "$binary" "$target/busybox"
echo "fetch-foreign-busybox.sh: installed $(basename "$deb") as $target/busybox"
