#!/usr/bin/env bash
# Lifecycle benchmark (issue 7): a cold `sandbox up` of the hello fixture against the seeds'
# hand-made procedure scripted with the same node image (docker run of the node, wait for
# it, `docker save | ctr import`, an openssl self-signed certificate, `kubectl create secret
# tls`, `sed ... | kubectl apply`, `kubectl rollout status`), a warm no-change `up` against
# `kubectl apply -f`, `down` against the hand-made teardown (with the leftovers counted), and
# the binary's start against kubectl's. Each repetition also runs the pods' floor: the same
# node by hand, watched lightly, which gives the node's own boot (docker run to the node
# taking pods) and what the fixture's pods alone take from then; sandbox's cold up is split
# at the moment its node took pods, to set beside both. The three take turns going first.
# Right after sandbox's up and the hand-made procedure return, every URL they printed gets
# one request (bench/urls.py), then requests until all answer: the failed first requests
# and the time to all answering are the figures a CI script (`up && curl "$URL"`) meets.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
# the hand-made peers build with the docker CLI's classic builder (the CLI here has no
# buildx for BuildKit); sandbox builds with the engine's default (BuildKit when on)
ensure_release_binary
command -v openssl >/dev/null || { echo "openssl is needed" >&2; exit 1; }

IMAGE=sandbox-offline/node:v1.20.2
FIXTURE=$ROOT/fixtures/apps/hello
WORKDIR=$(mktemp -d)
# sandbox's state (CA, DNS record, kubeconfig) kept apart from the user's
export XDG_STATE_HOME=$WORKDIR/state XDG_DATA_HOME=$WORKDIR/data KUBECONFIG=$WORKDIR/kubeconfig
RUN=bench-life-$$
cleanup() {
  for n in "$RUN"-s "$RUN"-warm; do "$SANDBOX" --name "$n" -q down --purge >/dev/null 2>&1 || true; done
  handmade_down >/dev/null 2>&1 || true
  floor_down >/dev/null 2>&1 || true
  rm -rf "$WORKDIR"
}
trap cleanup EXIT
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }

# ---------------------------------------------------------------- the hand-made procedure
H=$RUN-h # its node, network and volume
HK=$WORKDIR/handmade.kubeconfig
F=$RUN-f # the pods' floor's (below)
FK=$WORKDIR/floor.kubeconfig
handmade_down() {
  node_rm "$H"
  rm -f "$HK"
}
# node_start NAME: the node container by hand, on a network and a volume named NAME; prints
# the host port of its API server
node_start() {
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  docker network create "$1" >/dev/null
  # the node's flags: what it needs to run Kubernetes (this engine refuses --privileged,
  # so every capability but SYS_RESOURCE, as sandbox falls back to)
  docker run -d --name "$1" --hostname "$1" --network "$1" --cgroupns private \
    --tmpfs /run --tmpfs /var/run --tmpfs /tmp -v "$1:/var/lib/sandbox" \
    --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
    --security-opt systempaths=unconfined --cap-add ALL --cap-drop SYS_RESOURCE \
    --device-cgroup-rule 'a *:* rwm' --device /dev/kmsg -e "NODE_NAME=$1" \
    -p "127.0.0.1:$port:6443" "$IMAGE" >/dev/null
  echo "$port"
}
node_rm() {
  docker rm -f -v "$1" >/dev/null 2>&1 || true
  docker network rm "$1" >/dev/null 2>&1 || true
  docker volume rm "$1" >/dev/null 2>&1 || true
}
# handmade_up: prints the node's boot time (docker run to node Ready) on fd 3
handmade_up() {
  local start port
  start=$(now)
  port=$(node_start "$H")
  until docker exec "$H" test -s /etc/kubernetes/admin.conf 2>/dev/null; do sleep 0.2; done
  docker exec "$H" cat /etc/kubernetes/admin.conf | sed "s|server: .*|server: https://127.0.0.1:$port|" > "$HK"
  until [ -n "$(kubectl --kubeconfig "$HK" get nodes -o name 2>/dev/null)" ]; do sleep 0.2; done
  kubectl --kubeconfig "$HK" wait --for=condition=Ready node --all --timeout=180s >/dev/null
  echo "$(since "$start")" >&3
  # the image, built by the engine and piped into the node's containerd
  DOCKER_BUILDKIT=0 docker build -q -t hello:handmade "$FIXTURE/app" >/dev/null 2>&1
  docker save hello:handmade | docker exec -i "$H" ctr -n k8s.io images import - >/dev/null
  # a self-signed certificate for the app's host, stored as a TLS Secret
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=hello.127.0.0.1.nip.io" \
    -keyout "$WORKDIR/tls.key" -out "$WORKDIR/tls.crt" >/dev/null 2>&1
  kubectl --kubeconfig "$HK" create secret tls hello-tls --cert "$WORKDIR/tls.crt" --key "$WORKDIR/tls.key" >/dev/null
  # the manifests with their placeholders replaced by sed, then applied and waited for
  render_hello docker.io/library/hello:handmade | kubectl --kubeconfig "$HK" apply -f - >/dev/null
  kubectl --kubeconfig "$HK" rollout status deploy/hello --timeout=180s >/dev/null
  # the seeds' `minikube service --url`
  kubectl --kubeconfig "$HK" get svc hello -o jsonpath='{.spec.ports[0].nodePort}' >/dev/null
}

# ---------------------------------------------------------------- the pods' floor
# floor_up: the same node by hand, watched lightly (the kubeconfig read through the engine's
# archive API, as sandbox reads it, then bench/floor.py's requests every 20 ms), the hello
# image loaded while it boots, then the fixture's Deployment created through the API the
# moment the node takes pods. Prints on fd 3 the node's boot (docker run to taking pods) and
# the pods' floor (from then to rolled out, no tool's start inside).
floor_up() {
  local start port
  start=$(now)
  port=$(node_start "$F")
  until docker cp "$F:/etc/kubernetes/admin.conf" "$FK" 2>/dev/null && [ -s "$FK" ]; do sleep 0.2; done
  sed -i "s|server: .*|server: https://127.0.0.1:$port|" "$FK"
  docker save hello:handmade | docker exec -i "$F" ctr -n k8s.io images import - >/dev/null
  # the objects as JSON: kubectl needs an API server for that, so the first run makes them;
  # with sandbox's RBAC for the node (profiles/addons/node.yaml), which spares a new pod the
  # Node authorizer's race (its token mounted a second late): the floor has no avoidable wait
  if [ ! -s "$WORKDIR/floor.json" ]; then
    until kubectl --kubeconfig "$FK" get --raw /readyz >/dev/null 2>&1; do sleep 0.2; done
    { render_hello docker.io/library/hello:handmade; echo ---; cat "$ROOT/profiles/addons/node.yaml"; } |
      kubectl --kubeconfig "$FK" create --dry-run=client -o json -f - > "$WORKDIR/floor.json"
  fi
  python3 "$ROOT/bench/floor.py" "$FK" "$F" "$WORKDIR/floor.json" "$start" >&3
}
floor_down() { node_rm "$F"; rm -f "$FK"; }

# ---------------------------------------------------------------- cold up, down
# sandbox_up: prints, on fd 3, when its node took pods (seconds after the start, as its
# progress shows them, to 0.1 s)
sandbox_up() {
  "$SANDBOX" --name "$RUN-s" -v up -f "$FIXTURE/sandbox.yaml" -o json >"$WORKDIR/up.json" 2>"$WORKDIR/up.log"
  # when its node took pods, and how long its check of the printed URLs took
  { sed -n 's/^.*\[ *\([0-9.]*\)s\] ✓ node .* ready (.*$/\1/p' "$WORKDIR/up.log" | tail -1
    sed -n 's/^.*✓ URLs answer (\([0-9.]*\)s)$/\1/p' "$WORKDIR/up.log" | tail -1; } | paste -sd' ' >&3
}
sandbox_down() { "$SANDBOX" --name "$RUN-s" -q down --purge >/dev/null; }
leftovers() { # leftovers NAME: containers, networks and volumes whose name holds NAME
  local c n v
  c=$(docker ps -aq --filter "name=$1" | wc -l)
  n=$(docker network ls -q --filter "name=$1" | wc -l)
  v=$(docker volume ls -q --filter "name=$1" | wc -l)
  echo $((c + n + v))
}
cold_s=(); hand_s=(); boot_s=(); down_s=(); hdown_s=(); left_s=0; left_h=0
ready_s=(); after_s=(); floor_s=(); fboot_s=()
route_s=(); hroute_s=(); check_s=(); first_failed=0; hfirst_failed=0
time_sandbox() {
  local s c r f t
  s=$(now); sandbox_up 3>"$WORKDIR/ready"; c=$(since "$s"); cold_s+=("$c")
  read -r f t < <(python3 "$ROOT/bench/urls.py" "$WORKDIR/up.json" "$XDG_DATA_HOME/sandbox/ca/ca.crt")
  first_failed=$((first_failed + f)); route_s+=("$t")
  read -r r k < "$WORKDIR/ready"; ready_s+=("$r"); after_s+=("$(echo "$c - $r" | bc)"); check_s+=("${k:-0}")
  s=$(now); sandbox_down; down_s+=("$(since "$s")")
  left_s=$((left_s + $(leftovers "sandbox-$RUN-s")))
}
time_handmade() {
  local s ip port f t
  s=$(now); handmade_up 3>"$WORKDIR/boot"; hand_s+=("$(since "$s")"); boot_s+=("$(cat "$WORKDIR/boot")")
  # the URL `minikube service --url` would print: the node's address and the node port
  ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$H")
  port=$(kubectl --kubeconfig "$HK" get svc hello -o jsonpath='{.spec.ports[0].nodePort}')
  printf '{"urls": [{"url": "http://%s:%s/"}]}\n' "$ip" "$port" > "$WORKDIR/hand.json"
  read -r f t < <(python3 "$ROOT/bench/urls.py" "$WORKDIR/hand.json")
  hfirst_failed=$((hfirst_failed + f)); hroute_s+=("$t")
  s=$(now); handmade_down; hdown_s+=("$(since "$s")")
  left_h=$((left_h + $(leftovers "$H")))
}
time_floor() {
  local b f
  floor_up 3>"$WORKDIR/floor"
  read -r b f < "$WORKDIR/floor"; fboot_s+=("$b"); floor_s+=("$f")
  floor_down
}
DOCKER_BUILDKIT=0 docker build -q -t hello:handmade "$FIXTURE/app" >/dev/null 2>&1
ORDERS=("time_sandbox time_handmade time_floor" "time_handmade time_floor time_sandbox"
  "time_floor time_sandbox time_handmade")
for rep in $(seq "$REPS"); do
  # each goes first, second and third in turn (a run can slow the one after it)
  for run in ${ORDERS[$((rep % 3))]}; do $run; done
done
# the node's own boot: from the floor runs, where only light polling runs beside it (the
# hand-made procedure polls with docker exec and kubectl every 0.2 s; its figure is shown too)
cold=$(median "${cold_s[@]}"); hand=$(median "${hand_s[@]}"); boot=$(median "${fboot_s[@]}")
# each repetition's figures, for the spread behind the medians
{ echo "# $(date -u +%FT%TZ) REPS=$REPS: rep, sandbox cold up, hand-made, hand-made's node boot, sandbox's node taking pods, floor's node boot, pods' floor (s)"
  for i in "${!cold_s[@]}"; do
    echo "$((i + 1)) ${cold_s[$i]} ${hand_s[$i]} ${boot_s[$i]} ${ready_s[$i]} ${fboot_s[$i]} ${floor_s[$i]}"
  done
} >> "$RESULTS/lifecycle-runs.log"
table_start lifecycle "Lifecycle (hello fixture)"
row "cold up (node image present)" "$cold" "hand-made procedure, same node image" "$hand" "-"
overhead=$(echo "$cold - $boot" | bc); hand_overhead=$(echo "$hand - $boot" | bc)
row "cold up overhead over node boot" "$overhead" "hand-made procedure's overhead" "$hand_overhead" "< 2 s"
row "cold up: start to its node taking pods" "$(median "${ready_s[@]}")" "node boot (docker run to taking pods)" "$boot" "-"
row "cold up: node taking pods to up done (hello + 2 add-on pods)" "$(median "${after_s[@]}")" "pods' floor: hello's 2 pods alone, through the API" "$(median "${floor_s[@]}")" "-"
row "cold up: its check that every printed URL answers (part of cold up)" "$(median "${check_s[@]}")" "hand-made: rollout status returning to its NodePort URL answering" "$(median "${hroute_s[@]}")" "-"
row "up returning to every printed URL answering" "$(median "${route_s[@]}")" "hand-made: rollout status returning to its NodePort URL answering" "$(median "${hroute_s[@]}")" "0 s"
row_in requests "first requests right after return that failed (all runs)" "$first_failed" "hand-made procedure's" "$hfirst_failed" "0"
row "down --purge" "$(median "${down_s[@]}")" "docker rm -f -v + network rm + volume rm" "$(median "${hdown_s[@]}")" "< 3 s"
row_in objects "leftovers after down (all runs)" "$left_s" "hand-made teardown" "$left_h" "0"
printf '{"figure":"node boot","seconds":%s}\n' "$boot" >> "$JSON"
printf '{"figure":"node boot, hand-made polling","seconds":%s}\n' "$(median "${boot_s[@]}")" >> "$JSON"

# ---------------------------------------------------------------- warm up
# kubectl's copy in a namespace of its own, so that neither tool changes the other's objects
"$SANDBOX" --name "$RUN-warm" -q up -f "$FIXTURE/sandbox.yaml" >/dev/null
kubectl --context "sandbox-$RUN-warm" create namespace peer >/dev/null
ref=$(docker exec "sandbox-$RUN-warm-node" ctr -n k8s.io images ls -q | grep '/hello:sandbox-' | head -1)
render_hello "$ref" > "$WORKDIR/rendered.yaml"
kpeer() { kubectl --context "sandbox-$RUN-warm" -n peer apply -f "$WORKDIR/rendered.yaml" >/dev/null; }
kpeer
warm_s=(); kube_s=()
for rep in $(seq "$REPS"); do
  s=$(now); "$SANDBOX" --name "$RUN-warm" -v up -f "$FIXTURE/sandbox.yaml" >/dev/null 2>"$WORKDIR/warm.err"; warm_s+=("$(since "$s")")
  echo "warm up $rep: ${warm_s[-1]} s: $(grep -m1 'a full up\|nothing to build' "$WORKDIR/warm.err")" >&2
  s=$(now); kpeer; kube_s+=("$(since "$s")")
done
row "warm up, no change" "$(median "${warm_s[@]}")" "kubectl apply -f (same objects)" "$(median "${kube_s[@]}")" "< 1 s and <= 0.5x"

# ---------------------------------------------------------------- binary start, DNS memory
REPS=$((REPS * 4))
start_s=$(median_of "$SANDBOX" --version)
kstart_s=$(median_of kubectl version --client)
row "binary start (--version)" "$start_s" "kubectl version --client" "$kstart_s" "-"
dns_pid=$(python3 -c 'import json,os,sys; print(json.load(open(os.environ["XDG_STATE_HOME"]+"/sandbox/dns.json"))["pid"])' 2>/dev/null || echo "")
if [ -n "$dns_pid" ] && [ -r "/proc/$dns_pid/status" ]; then
  rss=$(awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$dns_pid/status")
  row_in MB "DNS server resident memory (idle, after the runs)" "$rss" "target" 15 "< 15 MB"
fi
echo >> "$TABLE"
{ echo "Node boot (docker run to the node taking pods: Ready, its not-ready taint lifted),"
  echo "measured in the floor runs: $boot s; docker run to Ready as the hand-made procedure"
  echo "polls it (docker exec, kubectl): $(median "${boot_s[@]}") s."
} >> "$TABLE"
cat "$TABLE"
