#!/usr/bin/env bash
# Sets up `sandbox` on a Debian or Ubuntu machine:
#   - installs what is missing (Docker from the distribution, build tools),
#   - starts dockerd when none answers,
#   - installs the `sandbox` binary (cargo install) into $SANDBOX_INSTALL_ROOT/bin
#     (default /usr/local as root, else ~/.local),
#   - prepares a node image: pulls rancher/k3s, or, with no registry, builds the offline one.
#
#   ./install.sh               everything above
#   ./install.sh --for-tests   prerequisites and the offline images the tests use (no binary, no pull)
#   ./install.sh --no-binary   skip the cargo install
set -euo pipefail

ROOT=$(cd "$(dirname "$0")" && pwd)
FOR_TESTS=false
BINARY=true
for arg in "$@"; do
  case $arg in
    --for-tests) FOR_TESTS=true; BINARY=false ;;
    --no-binary) BINARY=false ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
  esac
done

T0=$(date +%s)
say() { printf '[%4ds] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
die() { say "error: $*" >&2; exit 1; }
root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# --- packages ------------------------------------------------------------------------------
command -v apt-get >/dev/null || die "this installer supports Debian and Ubuntu (apt-get not found)"
PACKAGES=(docker.io gcc libc6-dev pkg-config make curl ca-certificates git)
missing=()
for p in "${PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  root apt-get update -qq
  root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  say "packages: present"
fi
command -v cargo >/dev/null || [ -x "$HOME/.cargo/bin/cargo" ] ||
  die "cargo not found: install Rust with https://rustup.rs (curl --proto '=https' -sSf https://sh.rustup.rs | sh), then rerun"
export PATH="$HOME/.cargo/bin:$PATH"

# --- dockerd -------------------------------------------------------------------------------
if docker info >/dev/null 2>&1; then
  say "docker: running"
else
  say "docker: starting dockerd"
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    root systemctl start docker || true
  elif command -v service >/dev/null && [ -x /etc/init.d/docker ]; then
    root service docker start || true
  fi
  if ! docker info >/dev/null 2>&1; then
    root sh -c 'nohup dockerd >/var/log/sandbox-dockerd.log 2>&1 &'
  fi
  deadline=$(( $(date +%s) + 60 ))
  until docker info >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || die "dockerd did not answer within 60 s (see /var/log/sandbox-dockerd.log)"
    sleep 0.5
  done
  say "docker: running ($(docker version --format '{{.Server.Version}}'))"
fi

# --- the binary ----------------------------------------------------------------------------
if $BINARY; then
  if [ "$(id -u)" = 0 ]; then PREFIX=${SANDBOX_INSTALL_ROOT:-/usr/local}; else PREFIX=${SANDBOX_INSTALL_ROOT:-$HOME/.local}; fi
  say "building and installing sandbox into $PREFIX/bin"
  cargo install --quiet --locked --path "$ROOT" --root "$PREFIX" --force
  case ":$PATH:" in
    *":$PREFIX/bin:"*) ;;
    *) say "add $PREFIX/bin to PATH: export PATH=\"$PREFIX/bin:\$PATH\"" ;;
  esac
fi

# --- the node image ------------------------------------------------------------------------
k3s_image=$(sed -n 's/^  image: *\(rancher\/k3s:[^ ]*\).*/\1/p' "$ROOT/profiles/k3s.yaml" | head -n 1)
if $FOR_TESTS && ! kubectl version --client >/dev/null 2>&1; then
  # the tests check the merged context with a real kubectl: Debian's, unpacked (its package
  # clashes with google-cloud-sdk's kubectl where that is installed)
  say "installing kubectl from Debian's kubernetes-client"
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download kubernetes-client >/dev/null 2>&1) || { root apt-get update -qq; (cd "$tmp" && apt-get download kubernetes-client >/dev/null); }
  dpkg -x "$tmp"/kubernetes-client_*.deb "$tmp/x"
  root install -m 0755 "$tmp/x/usr/bin/kubectl" /usr/local/bin/kubectl
  rm -rf "$tmp"
fi
if $FOR_TESTS; then
  say "building the offline images the tests use"
  "$ROOT/profiles/offline/build.sh"
elif docker image inspect "$k3s_image" >/dev/null 2>&1; then
  say "node image: $k3s_image present"
elif timeout 120 docker pull -q "$k3s_image" >/dev/null 2>&1; then
  say "node image: pulled $k3s_image"
else
  say "node image: $k3s_image cannot be pulled (no registry reachable); building the offline images"
  "$ROOT/profiles/offline/build.sh"
fi
say "done"
