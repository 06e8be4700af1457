#!/usr/bin/env bash
# The daily loop (issue 18): `sandbox dev` on the hello fixture, an edit at a time, against
# the hand-made loop, in the same run on the same node.
#   - sync path: an edit of a file under the image's `sync:` rule, until the new content is
#     served (no build, no restart);
#   - rebuild path: an edit of the image's page, until `dev` says the update is done (built,
#     loaded, applied, rolled out, URL answering), against the hand-made loop `docker build;
#     docker save | ctr import; kubectl set image; kubectl rollout status` of the same kind of
#     change; with the two floors under it measured alone: the `docker build` of such a
#     change, and its rollout (the image already in the node: `kubectl set image`, `rollout
#     status`, then until the URL serves the new page only, 5 requests in a row: what a
#     client needs before it surely gets the new content);
#     and the same edits under `dev --fast-rollout` (every new pod at once);
#   - the watcher idle with a 10,000-file build context: CPU and RSS of `sandbox dev
#     --no-logs`, beside `inotifywait -m -r` of the same tree (inotify-tools, when installed);
#   - restart: `sandbox up` of the stopped sandbox (`docker stop` of its node, as a reboot
#     leaves it) until ready, 5 times, beside the floors under it measured in the same boot:
#     the node container's start to its API server taking writes (the entrypoint's log), and
#     to every pod of the sandbox Ready again (a watch of the pods).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
# the hand-made peers build with the docker CLI's classic builder (the CLI here has no
# buildx for BuildKit); sandbox builds with the engine's default (BuildKit when on)
ensure_release_binary

WORKDIR=$(mktemp -d)
export XDG_STATE_HOME=$WORKDIR/state XDG_DATA_HOME=$WORKDIR/data KUBECONFIG=$WORKDIR/kubeconfig
NAME=bench-dev-$$
CTX=sandbox-$NAME
NODE=sandbox-$NAME-node
DEV_PID=
cleanup() {
  [ -n "$DEV_PID" ] && kill "$DEV_PID" 2>/dev/null && wait "$DEV_PID" 2>/dev/null || true
  "$SANDBOX" --name "$NAME" -q down --purge >/dev/null 2>&1 || true
  rm -rf "$WORKDIR"
}
trap cleanup EXIT
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }

# the hello fixture, its page directory writable by the container's user, www/synced/ synced
PROJECT=$WORKDIR/hello
cp -r "$ROOT/fixtures/apps/hello" "$PROJECT"
sed -i 's|COPY www /www|COPY --chown=65534:65534 www /www|' "$PROJECT/app/Dockerfile"
mkdir -p "$PROJECT/app/www/synced"
echo first > "$PROJECT/app/www/synced/page.txt"
sed -i 's|^    context: app$|    context: app\n    sync:\n      - {from: www/synced/, to: /www/synced/}|' "$PROJECT/sandbox.yaml"
grep -q 'sync:' "$PROJECT/sandbox.yaml"

cd "$PROJECT"
"$SANDBOX" --name "$NAME" dev --no-logs > "$WORKDIR/dev.out" 2> "$WORKDIR/dev.err" &
DEV_PID=$!
for _ in $(seq 600); do grep -q 'watching' "$WORKDIR/dev.err" && break; sleep 0.2; done
grep -q 'watching' "$WORKDIR/dev.err" || { cat "$WORKDIR/dev.err" >&2; exit 1; }
URL=$("$SANDBOX" --name "$NAME" urls -o json | python3 -c 'import json,sys; print([u["url"] for u in json.load(sys.stdin)["urls"] if u["kind"] == "NodePort"][0])')
URL=${URL%/}

# until_served PATH TEXT [ROW]: polls the URL (the Service by name through the ingress, sent
# to 127.0.0.1 as its nip.io name resolves) every 20 ms until its body holds TEXT, ROW
# requests in a row (default 1; 60 s at most)
until_served() {
  local row=0
  for _ in $(seq 3000); do
    if curl -sk --connect-to ::127.0.0.1: --max-time 2 "$URL$1" | grep -q "$2"; then
      row=$((row + 1)); [ "$row" -ge "${3:-1}" ] && return 0
    else
      row=0; sleep 0.02
    fi
  done
  echo "never served ${3:-1} in a row: $URL$1 $2" >&2
  return 1
}
# until_said TEXT: waits until dev's progress has a line with TEXT (120 s at most)
until_said() {
  for _ in $(seq 6000); do
    grep -q "$1" "$WORKDIR/dev.err" && return 0
    sleep 0.02
  done
  echo "dev never said: $1" >&2
  tail -20 "$WORKDIR/dev.err" >&2
  return 1
}

update=0
sync_times=()
rebuild_times=()
own_times=()
for i in $(seq "$REPS"); do
  # sync path
  update=$((update + 1))
  s=$(now)
  echo "synced $i $$" > "$PROJECT/app/www/synced/page.txt"
  until_served /synced/page.txt "synced $i $$"
  sync_times+=("$(since "$s")")
  until_said "update $update done"
  # rebuild path: until dev says the update is done (rolled out, URL answering)
  update=$((update + 1))
  s=$(now)
  echo "rebuilt $i $$" > "$PROJECT/app/www/index.html"
  until_said "update $update done"
  rebuild_times+=("$(since "$s")")
  until_served / "rebuilt $i $$"
done
# sandbox's own part of an update: its whole time less the build and the rollout's wait
# (from its progress: "done in 3.1s: ... (build 0.4s, load 0.3s, apply 0.1s, rollout 2.2s, ...")
for n in $(seq 2 2 "$update"); do
  line=$(grep "update $n done in" "$WORKDIR/dev.err" | head -1)
  own_times+=("$(echo "$line" | sed -E 's/.*done in ([0-9.]+)s.*build ([0-9.]+)s.*rollout ([0-9.]+)s.*/\1 - \2 - \3/' | bc)")
done
kill "$DEV_PID"; wait "$DEV_PID" 2>/dev/null || true; DEV_PID=

# the rebuild path again with the opt-in strategy: `dev --fast-rollout`
: > "$WORKDIR/dev.err"
"$SANDBOX" --name "$NAME" dev --no-logs --fast-rollout > "$WORKDIR/dev.out" 2> "$WORKDIR/dev.err" &
DEV_PID=$!
until_said "watching"
fast_times=()
update=0
for i in $(seq "$REPS"); do
  update=$((update + 1))
  s=$(now)
  echo "fast $i $$" > "$PROJECT/app/www/index.html"
  until_said "update $update done"
  fast_times+=("$(since "$s")")
  until_served / "fast $i $$"
done
kill "$DEV_PID"; wait "$DEV_PID" 2>/dev/null || true; DEV_PID=
# the Deployment's own strategy again for what follows
"$SANDBOX" --name "$NAME" -q up >/dev/null

# the hand-made loop on the same node and Deployment; and its floors, each alone
hand_times=()
build_times=()
rollout_times=()
for i in $(seq "$REPS"); do
  echo "by hand $i $$" > "$PROJECT/app/www/index.html"
  s=$(now)
  DOCKER_BUILDKIT=0 docker build -q -t "hello:hand-$i-$$" "$PROJECT/app" >/dev/null
  docker save "hello:hand-$i-$$" | docker exec -i "$NODE" ctr -n k8s.io images import - >/dev/null
  kubectl --context "$CTX" set image deploy/hello "web=hello:hand-$i-$$" >/dev/null
  kubectl --context "$CTX" rollout status deploy/hello --timeout=120s >/dev/null
  hand_times+=("$(since "$s")")
  echo "build floor $i $$" > "$PROJECT/app/www/index.html"
  s=$(now)
  DOCKER_BUILDKIT=0 docker build -q -t "hello:floor-$i-$$" "$PROJECT/app" >/dev/null
  build_times+=("$(since "$s")")
  # the rollout of the change: its image already in the node, from `set image` until it is
  # rolled out and the URL serves the new page only (5 requests in a row: kube-proxy's
  # rules no longer send to the old pods)
  docker save "hello:floor-$i-$$" | docker exec -i "$NODE" ctr -n k8s.io images import - >/dev/null
  s=$(now)
  kubectl --context "$CTX" set image deploy/hello "web=hello:floor-$i-$$" >/dev/null
  kubectl --context "$CTX" rollout status deploy/hello --timeout=120s >/dev/null
  until_served / "build floor $i $$" 5
  rollout_times+=("$(since "$s")")
done

# the watcher idle, with a 10,000-file build context: CPU over 10 s and RSS of `sandbox dev
# --no-logs` once it watches, beside `inotifywait -m -r` of the same context
for d in $(seq 100); do
  mkdir -p "$PROJECT/app/www/many/$d"
  for f in $(seq 100); do : > "$PROJECT/app/www/many/$d/$f.txt"; done
done
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# idle PID: "CPU% RSS_MB" over 10 s
idle() {
  local hz t0 t1
  hz=$(getconf CLK_TCK)
  t0=$(ticks "$1"); sleep 10; t1=$(ticks "$1")
  echo "$(echo "scale=2; 100 * ($t1 - $t0) / $hz / 10" | bc) $(awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$1/status")"
}
: > "$WORKDIR/dev.err"
"$SANDBOX" --name "$NAME" dev --no-logs > "$WORKDIR/dev.out" 2> "$WORKDIR/dev.err" &
DEV_PID=$!
until_said "watching"
sleep 2 # settled: the no-change up's connections closed
read -r dev_cpu dev_rss < <(idle "$DEV_PID")
kill -INT "$DEV_PID"; wait "$DEV_PID" 2>/dev/null || true; DEV_PID=
peer_cpu=- peer_rss=-
if command -v inotifywait >/dev/null; then
  inotifywait -m -r -q "$PROJECT/app" > /dev/null 2>&1 &
  peer=$!
  sleep 2
  read -r peer_cpu peer_rss < <(idle "$peer")
  kill "$peer"; wait "$peer" 2>/dev/null || true
fi

# restart: the stopped sandbox's `up`, and the node's own part of each boot: its API server
# taking writes (the entrypoint's log), and every pod of the sandbox Ready again (a watch
# of the pods from when the API server answers, each event stamped as it arrives)
restart_times=()
api_times=()
pods_times=()
watch_pods() {
  until kubectl --context "$CTX" get --raw /readyz >/dev/null 2>&1; do sleep 0.05; done
  kubectl --context "$CTX" get pods -A -w --request-timeout=0 \
    -o jsonpath='{.metadata.namespace}/{.metadata.name} {.status.conditions[?(@.type=="Ready")].status}{"\n"}' |
    while read -r pod ready; do echo "$(now) $pod $ready"; done
}
for i in 1 2 3 4 5; do
  docker stop "$NODE" >/dev/null
  watch_pods > "$WORKDIR/pods.log" 2>/dev/null &
  watcher=$!
  s=$(now)
  "$SANDBOX" --name "$NAME" -q up >/dev/null
  restart_times+=("$(since "$s")")
  pkill -P "$watcher" 2>/dev/null || true; kill "$watcher" 2>/dev/null || true; wait "$watcher" 2>/dev/null || true
  started=$(docker inspect -f '{{.State.StartedAt}}' "$NODE")
  # each pod's last turn to Ready (its status from before the restart says True at first)
  pods_times+=("$(python3 -c 'import sys, datetime as d
started = d.datetime.fromisoformat(sys.argv[1][:26].rstrip("Z")).replace(tzinfo=d.timezone.utc).timestamp()
last, ready_at = {}, {}
for line in open(sys.argv[2]):
    parts = line.split()
    if len(parts) < 3:
        continue
    t, pod, ready = float(parts[0]), parts[1], parts[2]
    if ready == "True" and last.get(pod) not in (None, "True"):
        ready_at[pod] = t
    last[pod] = ready
print("%.2f" % (max(ready_at.values()) - started) if ready_at else "-")' "$started" "$WORKDIR/pods.log")")
  api_times+=("$(docker logs "$NODE" 2>&1 | grep 'kube-apiserver (taking writes) ready' | tail -1 |
    python3 -c 'import sys, datetime as d
started = d.datetime.fromisoformat(sys.argv[1][:26].rstrip("Z"))
t = d.datetime.strptime(sys.stdin.read().split("]")[0].split()[1], "%H:%M:%S.%f")
t = started.replace(hour=t.hour, minute=t.minute, second=t.second, microsecond=t.microsecond)
print("%.2f" % (t - started).total_seconds())' "$started")")
done

sync_s=$(median "${sync_times[@]}")
rebuild_s=$(median "${rebuild_times[@]}")
hand_s=$(median "${hand_times[@]}")
build_s=$(median "${build_times[@]}")
rollout_s=$(median "${rollout_times[@]}")
floor_s=$(echo "$build_s + $rollout_s + 0.3" | bc)
table_start dev "The daily loop (issue 18)"
row "edit -> served, sync path" "$sync_s" "rebuild path (sandbox dev)" "$rebuild_s" "< 0.5 s"
row "edit -> rolled out, rebuild path" "$rebuild_s" "docker build; docker save \\| ctr import; kubectl set image; rollout status" "$hand_s" "<= build + rollout + 0.3 s = ${floor_s} s"
row "edit -> rolled out, rebuild path, dev --fast-rollout" "$(median "${fast_times[@]}")" "rebuild path (the Deployment's own strategy)" "$rebuild_s" "-"
row "floor: docker build of the change" "$build_s" "-" 0 "-"
row "floor: rollout of the change (set image -> served only)" "$rollout_s" "-" 0 "-"
row_in "% of a core" "watcher idle, 10,000-file context: CPU" "$dev_cpu" "inotifywait -m -r" "$peer_cpu" "< 1%"
row_in MB "watcher idle, 10,000-file context: RSS" "$dev_rss" "inotifywait -m -r" "$peer_rss" "< 30 MB"
row "restart of the stopped sandbox to ready" "$(median "${restart_times[@]}")" "floor: node start to its API server taking writes" "$(median "${api_times[@]}")" "< 5 s"
row "restart of the stopped sandbox to ready" "$(median "${restart_times[@]}")" "floor: node start to every pod Ready again" "$(median "${pods_times[@]}")" "< 5 s"
cat "$TABLE"
echo
echo "sandbox dev's own part of each update (rebuild path: its time less build and rollout): ${own_times[*]}"
echo "restarts: ${restart_times[*]}; the node's API server taking writes: ${api_times[*]}; every pod Ready: ${pods_times[*]}"
