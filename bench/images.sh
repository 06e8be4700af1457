#!/usr/bin/env bash
# Image benchmarks (issue 3): a no-change `sandbox up`, loading a 50 MB image against the raw
# pipe `docker save | docker exec -i NODE ctr -n k8s.io images import -`, and loading it again
# when the node already holds it.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
# the hand-made peers build with the docker CLI's classic builder (the CLI here has no
# buildx for BuildKit); sandbox builds with the engine's default (BuildKit when on)
ensure_release_binary
NAME=bench-images-$$
NODE=sandbox-$NAME-node
IMG=sandbox-bench/fifty:$$
export KUBECONFIG=$(mktemp)
BK=$(mktemp -d)
cleanup() {
  "$SANDBOX" --name "$NAME" -q down --purge >/dev/null 2>&1 || true
  docker rmi -f "$IMG" >/dev/null 2>&1 || true
  docker images -q "sandbox-bench/bk-*-$$" | xargs -r docker rmi -f >/dev/null 2>&1 || true
  rm -rf "$KUBECONFIG" "$BK"
}
trap cleanup EXIT

# a 50 MB single-layer image of incompressible data
ctx=$(mktemp -d)
head -c 50000000 /dev/urandom > "$ctx/blob"
printf 'FROM sandbox-offline/busybox:1.35\nCOPY blob /blob\n' > "$ctx/Dockerfile"
DOCKER_BUILDKIT=0 docker build -q -t "$IMG" "$ctx" >/dev/null
rm -rf "$ctx"

ref=$("$SANDBOX" --name "$NAME" -q -o json up -f "$ROOT/fixtures/apps/hello/sandbox.yaml" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["images"][0]["reference"])')
# the same objects sandbox applies, rendered by hand the way the seeds' scripts do (sed)
rendered=$(mktemp --suffix=.yaml)
render_hello "$ref" > "$rendered"
table_start images "Images"

unset -f prepare
up_s=$(median_of "$SANDBOX" --name "$NAME" -q up -f "$ROOT/fixtures/apps/hello/sandbox.yaml")
apply_s=$(median_of kubectl --context "sandbox-$NAME" apply --server-side --force-conflicts \
  --field-manager=sandbox -f "$rendered")
row "up, no change (hello)" "$up_s" "kubectl apply --server-side (same objects)" "$apply_s" "< 1 s"

IMG_ID=$(docker image inspect -f '{{.Id}}' "$IMG")
# forget the image entirely: its name and the ID name containerd's CRI plugin adds
prepare() { docker exec "$NODE" ctr -n k8s.io images rm "docker.io/$IMG" "$IMG_ID" >/dev/null 2>&1 || true; }
# interleaved, so that both see the same machine state
times_load=(); times_raw=()
for _ in $(seq "$REPS"); do
  prepare; s=$(date +%s.%N); "$SANDBOX" --name "$NAME" -q load "$IMG" >/dev/null; e=$(date +%s.%N)
  times_load+=("$(echo "$e - $s" | bc)")
  prepare; s=$(date +%s.%N); sh -c "docker save $IMG | docker exec -i $NODE ctr -n k8s.io images import -" >/dev/null; e=$(date +%s.%N)
  times_raw+=("$(echo "$e - $s" | bc)")
done
load_s=$(median "${times_load[@]}")
raw_s=$(median "${times_raw[@]}")
row "load 50 MB image" "$load_s" "docker save \\| ctr import" "$raw_s" "<= 1.1x"

unset -f prepare
"$SANDBOX" --name "$NAME" -q load "$IMG" >/dev/null
present_s=$(median_of "$SANDBOX" --name "$NAME" -q load "$IMG")
row "load again, already present" "$present_s" "docker save \\| ctr import" "$raw_s" "< 0.3 s"

# BuildKit (issue 19), both builders through sandbox's own build (the engine's API), each
# rebuild after a change to the context. (1) A step after the change needs what an earlier
# run made (dependencies fetched or compiled into a cache): BuildKit with a cache mount keeps
# it; the classic builder runs the same step without the mount and redoes it (and cleans up
# after itself, as such Dockerfiles do). The work is synthetic: 300 MB from /dev/urandom,
# hashed; the mount's id is the same in every run, so the engine keeps one such cache, not
# one per run. (2) An ordinary image (hello: COPY of the changed files), where neither has a cache
# to lean on: the cost of BuildKit itself.
unset -f prepare
work='test -f /cache/deps || { head -c 300000000 /dev/urandom > /cache/deps; sha256sum /cache/deps > /cache/sum; }; cp /cache/sum /sum'
# project DIR NAME DOCKERFILE: a project whose one image is built from DOCKERFILE
project() {
  mkdir -p "$BK/$1/app/src"
  printf '%s\n' "$3" > "$BK/$1/app/Dockerfile"
  printf 'apiVersion: sandbox.dev/v1alpha1\nkind: Sandbox\nname: %s\nimages:\n  - name: %s\n    context: app\n' \
    "$NAME-$1" "sandbox-bench/bk-$2-$$" > "$BK/$1/sandbox.yaml"
}
project mount mount "FROM sandbox-offline/busybox:1.35
COPY src /src
RUN --mount=type=cache,target=/cache,id=sandbox-bench-deps sh -c '$work'"
project plain plain "FROM sandbox-offline/busybox:1.35
COPY src /src
RUN mkdir /cache && sh -c '$work' && rm -rf /cache"
cp -r "$ROOT/fixtures/apps/hello/app" "$BK/hello-app"
project hello hello "$(cat "$BK/hello-app/Dockerfile")"
rm -rf "$BK/hello/app" && mv "$BK/hello-app" "$BK/hello/app"
prepare() { date +%s%N > "$BK/mount/app/src/stamp"; date +%s%N > "$BK/plain/app/src/stamp"; date +%s%N > "$BK/hello/app/www/stamp"; }
prepare
"$SANDBOX" -q build -f "$BK/mount/sandbox.yaml" >/dev/null
DOCKER_BUILDKIT=0 "$SANDBOX" -q build -f "$BK/plain/sandbox.yaml" >/dev/null
times_kit=(); times_classic=(); times_hello_kit=(); times_hello_classic=()
for _ in $(seq "$REPS"); do
  prepare
  s=$(date +%s.%N); "$SANDBOX" -q build -f "$BK/mount/sandbox.yaml" >/dev/null; e=$(date +%s.%N)
  times_kit+=("$(echo "$e - $s" | bc)")
  s=$(date +%s.%N); DOCKER_BUILDKIT=0 "$SANDBOX" -q build -f "$BK/plain/sandbox.yaml" >/dev/null; e=$(date +%s.%N)
  times_classic+=("$(echo "$e - $s" | bc)")
  s=$(date +%s.%N); "$SANDBOX" -q build -f "$BK/hello/sandbox.yaml" >/dev/null; e=$(date +%s.%N)
  times_hello_kit+=("$(echo "$e - $s" | bc)")
  s=$(date +%s.%N); DOCKER_BUILDKIT=0 "$SANDBOX" -q build -f "$BK/hello/sandbox.yaml" >/dev/null; e=$(date +%s.%N)
  times_hello_classic+=("$(echo "$e - $s" | bc)")
done
row "warm rebuild, cache mount (BuildKit)" "$(median "${times_kit[@]}")" \
  "classic builder, same step without the mount" "$(median "${times_classic[@]}")" "< classic"
row "rebuild after a COPY change (hello, BuildKit)" "$(median "${times_hello_kit[@]}")" \
  "classic builder" "$(median "${times_hello_classic[@]}")" "<= 1.1x"

cat "$TABLE"
