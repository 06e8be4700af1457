#!/usr/bin/env bash
# Cluster mode benchmark (issue 17). The "existing cluster" is a sandbox node with its own
# registry (`registry: local`); a project deploys per-branch environments to it by context.
#   - a new environment from nothing to ready (a changed 50 MB image layer built and
#     pushed, the namespace, the objects, the rollout) against the hand-made procedure:
#     docker build + docker push + kubectl create ns + sed | kubectl apply + kubectl
#     rollout status;
#   - the push of a 50 MB image with one changed layer (sandbox's push step, from its
#     progress) against `docker push` of another such change;
#   - the second `up` of an unchanged environment against `kubectl apply --server-side` of
#     the same objects.
# Each repetition makes a new 50 MB layer of incompressible data for each side.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
# the hand-made peers build with the docker CLI's classic builder (the CLI here has no
# buildx for BuildKit); sandbox builds with the engine's default (BuildKit when on)
ensure_release_binary

WORKDIR=$(mktemp -d)
export XDG_STATE_HOME=$WORKDIR/state XDG_DATA_HOME=$WORKDIR/data KUBECONFIG=$WORKDIR/kubeconfig
SHARED=bench-cl-$$
CTX=sandbox-$SHARED
cleanup() {
  "$SANDBOX" --name "$SHARED" -q down --purge >/dev/null 2>&1 || true
  rm -rf "$WORKDIR"
}
trap cleanup EXIT
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }

# the existing cluster, with its registry
mkdir -p "$WORKDIR/shared"
printf 'apiVersion: sandbox.dev/v1alpha1\nkind: Sandbox\nregistry: local\naddons: {maildev: false}\n' \
  > "$WORKDIR/shared/sandbox.yaml"
"$SANDBOX" --name "$SHARED" -q up -f "$WORKDIR/shared/sandbox.yaml" >/dev/null
REG=$(docker port "sandbox-$SHARED-registry" 5000/tcp)

# the project: the hello fixture's manifests, its image a 50 MB layer and the page
P=$WORKDIR/project
mkdir -p "$P/k8s" "$P/app/www"
cp "$ROOT/fixtures/apps/hello/k8s/all-in-one.yaml" "$P/k8s/"
echo "hello from sandbox" > "$P/app/www/index.html"
cat > "$P/app/Dockerfile" <<'EOF'
FROM sandbox-offline/busybox:1.35
COPY blob /blob
COPY www /www
USER 65534:65534
ENTRYPOINT ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]
EOF
cat > "$P/sandbox.yaml" <<EOF
apiVersion: sandbox.dev/v1alpha1
kind: Sandbox
name: benchc
manifests: [k8s/all-in-one.yaml]
images: [{name: hello, context: app}]
variables: {GREETING: hello from sandbox}
cluster: {context: $CTX, registry: $REG/bench}
EOF
H=$WORKDIR/hand
cp -r "$P/app" "$H"
new_layer() { head -c 50000000 /dev/urandom > "$1/blob"; }

# the hand-made procedure for environment $1, image tag $2
handmade() {
  DOCKER_BUILDKIT=0 docker build -q -t "$REG/hand/hello:$2" "$H" >/dev/null
  docker push -q "$REG/hand/hello:$2" >/dev/null
  kubectl --context "$CTX" create namespace "$1" >/dev/null
  sed -e 's/\${GREETING}/hello from sandbox/' -e "s|image: hello:0.0.1|image: $REG/hand/hello:$2|" \
    "$P/k8s/all-in-one.yaml" | kubectl --context "$CTX" -n "$1" apply -f - >/dev/null
  kubectl --context "$CTX" -n "$1" rollout status deploy/hello --timeout=180s >/dev/null
}

# warm both repositories' base layers, so that every timed push has one changed layer
new_layer "$P/app"; "$SANDBOX" -q up -f "$P/sandbox.yaml" --namespace warm-s >/dev/null
new_layer "$H"; handmade warm-h 0

table_start cluster "Cluster mode (issue 17)"
env_s=(); env_h=(); push_s=(); push_h=()
for i in $(seq "$REPS"); do
  new_layer "$P/app"
  s=$(now)
  "$SANDBOX" up -f "$P/sandbox.yaml" --namespace "env-s-$i" 2> "$WORKDIR/up.log" >/dev/null
  env_s+=("$(since "$s")")
  push=$(sed -n 's/.*✓ pushed .* (\([0-9.]*\)s)$/\1/p' "$WORKDIR/up.log")
  [ -n "$push" ] || { cat "$WORKDIR/up.log" >&2; echo "no push in sandbox's progress" >&2; exit 1; }
  push_s+=("$push")
  new_layer "$H"
  s=$(now)
  handmade "env-h-$i" "$i"
  env_h+=("$(since "$s")")
  # docker push of another such change, alone
  new_layer "$H"
  DOCKER_BUILDKIT=0 docker build -q -t "$REG/hand/hello:p$i" "$H" >/dev/null
  s=$(now)
  docker push -q "$REG/hand/hello:p$i" >/dev/null
  push_h+=("$(since "$s")")
done
row "new environment to ready (50 MB layer changed)" "$(median "${env_s[@]}")" \
  "docker build + push, kubectl create ns + apply + rollout status" "$(median "${env_h[@]}")" "<= 1.2x"
row "push, 50 MB image with one changed layer" "$(median "${push_s[@]}")" "docker push" \
  "$(median "${push_h[@]}")" "<= 1.2x"

# the second up of an unchanged environment against the apply of the same objects (the
# first up brings env-s-1 to the project's last change)
"$SANDBOX" -q up -f "$P/sandbox.yaml" --namespace "env-s-1" >/dev/null
ref=$("$SANDBOX" -q -o json up -f "$P/sandbox.yaml" --namespace "env-s-1" |
  python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["unchanged"], d; print(d["images"][0]["reference"])')
rendered=$WORKDIR/rendered.yaml
sed -e 's/\${GREETING}/hello from sandbox/' -e "s|image: hello:0.0.1|image: $ref|" \
  "$P/k8s/all-in-one.yaml" > "$rendered"
unset -f prepare
warm_s=$(median_of "$SANDBOX" -q up -f "$P/sandbox.yaml" --namespace "env-s-1")
apply_s=$(median_of kubectl --context "$CTX" -n env-s-1 apply --server-side --force-conflicts \
  --field-manager=sandbox -f "$rendered")
row "up, unchanged environment (no push)" "$warm_s" "kubectl apply --server-side (same objects)" "$apply_s" "< 0.3 s"
cat "$TABLE"
