#!/usr/bin/env bash
# Image benchmarks (issue 3): a no-change `sandbox up`, loading a 50 MB image against the raw
# pipe `docker save | docker exec -i NODE ctr -n k8s.io images import -`, and loading it again
# when the node already holds it.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_release_binary
NAME=bench-images-$$
NODE=sandbox-$NAME-node
IMG=sandbox-bench/fifty:$$
export KUBECONFIG=$(mktemp)
cleanup() { "$SANDBOX" --name "$NAME" -q down --purge >/dev/null 2>&1 || true; docker rmi -f "$IMG" >/dev/null 2>&1 || true; rm -f "$KUBECONFIG"; }
trap cleanup EXIT

# a 50 MB single-layer image of incompressible data
ctx=$(mktemp -d)
head -c 50000000 /dev/urandom > "$ctx/blob"
printf 'FROM sandbox-offline/busybox:1.35\nCOPY blob /blob\n' > "$ctx/Dockerfile"
docker build -q -t "$IMG" "$ctx" >/dev/null
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

cat "$TABLE"
