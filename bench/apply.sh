#!/usr/bin/env bash
# Manifest benchmark (issue 4): apply a 300-object all-in-one file and wait for it, with
# `sandbox apply` and with `kubectl apply --server-side` + `kubectl rollout status`, in the
# same run on the same node; then a no-change re-apply.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_release_binary
NAME=bench-apply-$$
export KUBECONFIG=$(mktemp)
WORKDIR=$(mktemp -d)
cleanup() { "$SANDBOX" --name "$NAME" -q down --purge >/dev/null 2>&1 || true; rm -rf "$KUBECONFIG" "$WORKDIR"; }
trap cleanup EXIT

# 300 objects: 250 ConfigMaps, 30 Secrets, 10 Deployments (1 replica) and their 10 Services
gen() { # gen NAMESPACE
  for i in $(seq 1 250); do printf -- '---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm-%s, namespace: %s}\ndata: {key: "value %s"}\n' "$i" "$1" "$i"; done
  for i in $(seq 1 30); do printf -- '---\napiVersion: v1\nkind: Secret\nmetadata: {name: s-%s, namespace: %s}\nstringData: {k: "v%s"}\n' "$i" "$1" "$i"; done
  for i in $(seq 1 10); do cat <<YAML
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web-$i, namespace: $1}
spec:
  replicas: 1
  selector: {matchLabels: {app: web-$i}}
  template:
    metadata: {labels: {app: web-$i}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: web
          image: sandbox-offline/busybox:1.35
          imagePullPolicy: Never
          command: [sh, -c, "exec httpd -f -p 8080"]
          ports: [{containerPort: 8080, protocol: TCP}]
          readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web-$i, namespace: $1}
spec:
  selector: {app: web-$i}
  ports: [{port: 80, targetPort: 8080, protocol: TCP}]
YAML
  done
}

"$SANDBOX" --name "$NAME" -q up >/dev/null
"$SANDBOX" --name "$NAME" -q load sandbox-offline/busybox:1.35 >/dev/null
CTX=sandbox-$NAME
table_start apply "Manifests (300 objects)"

# each repetition starts from an empty namespace of its own
run=0
GEN=gen
fresh_namespaces() {
  run=$((run + 1))
  NS_S=sb-$run; NS_K=kc-$run
  mkdir -p "$WORKDIR/$NS_S"
  "$GEN" "$NS_S" > "$WORKDIR/$NS_S/all.yaml"
  "$GEN" "$NS_K" > "$WORKDIR/$NS_K.yaml"
  printf 'apiVersion: sandbox.dev/v1alpha1\nkind: Sandbox\nnamespace: %s\nmanifests: [all.yaml]\n' "$NS_S" > "$WORKDIR/$NS_S/sandbox.yaml"
  kubectl --context "$CTX" create namespace "$NS_K" >/dev/null
}
sandbox_apply() { "$SANDBOX" --name "$NAME" -q apply -f "$WORKDIR/$NS_S/sandbox.yaml"; }
kubectl_apply() {
  kubectl --context "$CTX" apply --server-side -f "$WORKDIR/$NS_K.yaml" >/dev/null
  for i in $(seq 1 10); do kubectl --context "$CTX" -n "$NS_K" rollout status "deploy/web-$i" --timeout=300s >/dev/null; done
}
# each repetition on a quiet node (the previous namespaces fully deleted: their terminating
# pods would slow whichever tool runs next), the two tools taking turns to go first
time_sandbox() { local s e; s=$(date +%s.%N); sandbox_apply; e=$(date +%s.%N); times_s+=("$(echo "$e - $s" | bc)"); }
time_kubectl() { local s e; s=$(date +%s.%N); kubectl_apply; e=$(date +%s.%N); times_k+=("$(echo "$e - $s" | bc)"); }
# alternating: one row of both tools applying and waiting, over REPS fresh namespaces
alternating() { # alternating FIGURE TARGET
  times_s=(); times_k=()
  for rep in $(seq "$REPS"); do
    fresh_namespaces
    if [ $((rep % 2)) = 1 ]; then time_sandbox; time_kubectl; else time_kubectl; time_sandbox; fi
    kubectl --context "$CTX" delete namespace "$NS_S" "$NS_K" --timeout=300s >/dev/null
  done
  row "$1" "$(median "${times_s[@]}")" "kubectl apply --server-side + rollout status" "$(median "${times_k[@]}")" "$2"
}
alternating "apply 300 objects and wait" "<= 0.5x"

# the floor under that figure: the same ten Deployments and their Services alone (20
# objects), the same way; what the 300-object figure adds to it is the other 280 objects
gen_pods() { gen "$1" | awk 'BEGIN {RS = "---\n"; ORS = ""} /kind: (Deployment|Service)\n/ {print "---\n" $0}'; }
run=200
GEN=gen_pods
alternating "apply the 10 Deployments + 10 Services alone and wait" "-"
GEN=gen

# no-change re-apply of the last set, both tools
fresh_namespaces
sandbox_apply >/dev/null; kubectl_apply
again_s=$(median_of sandbox_apply)
again_k=$(median_of kubectl_apply)
row "re-apply 300 objects, no change" "$again_s" "kubectl apply --server-side + rollout status" "$again_k" "< 1 s"

# the apply machinery alone: 300 objects that start no pod (270 ConfigMaps, 30 Secrets), so
# that the node's pod start-up, which both tools wait for alike, is out of the figure
gen_plain() { gen "$1" | awk '/^---$/ {n++} n <= 280' ; for i in $(seq 251 270); do printf -- '---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm-%s, namespace: %s}\ndata: {key: "value %s"}\n' "$i" "$1" "$i"; done; }
run=100
GEN=gen_plain
kubectl_plain() { kubectl --context "$CTX" apply --server-side -f "$WORKDIR/$NS_K.yaml" >/dev/null; }
times_s=(); times_k=()
for _ in $(seq "$REPS"); do
  fresh_namespaces
  s=$(date +%s.%N); sandbox_apply; e=$(date +%s.%N); times_s+=("$(echo "$e - $s" | bc)")
  s=$(date +%s.%N); kubectl_plain; e=$(date +%s.%N); times_k+=("$(echo "$e - $s" | bc)")
done
row "apply 300 objects that start no pod" "$(median "${times_s[@]}")" "kubectl apply --server-side" "$(median "${times_k[@]}")" "<= 0.5x"
cat "$TABLE"
