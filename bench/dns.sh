#!/usr/bin/env bash
# DNS benchmark (issue 5): queries per second and p99 latency of the embedded server
# (`sandbox dns serve`) and of dnsmasq answering the equivalent wildcard
# (address=/nip.io/127.0.0.1, address=/sslip.io/127.0.0.1), with the same dnsperf command,
# alternating, in the same run; then the CPU each server spent per query and its peak
# resident memory (VmHWM).
#
# DURATION (seconds per dnsperf run, default 10), CLIENTS (dnsperf -c, default 4) and
# OUTSTANDING (dnsperf -q, default 100) tune the load; -Q is never set, so dnsperf sends as
# fast as the server answers.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-4}
OUTSTANDING=${OUTSTANDING:-100}
DNSPERF_OPTS=(-s 127.0.0.1 -m udp -T 1 -c "$CLIENTS" -q "$OUTSTANDING" -l "$DURATION" -t 5 -v)

# need COMMAND PACKAGE: installs the Debian package when the command is missing.
# dnsmasq comes from dnsmasq-base: the binary alone, without the system service that the
# `dnsmasq` package starts on port 53.
need() {
  command -v "$1" >/dev/null && return
  local sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300)
  "${apt[@]}" install -y --no-install-recommends "$2" >/dev/null ||
    { "${apt[@]}" update >/dev/null && "${apt[@]}" install -y --no-install-recommends "$2" >/dev/null; }
  command -v "$1" >/dev/null || { echo "$1 is still missing after installing $2" >&2; exit 1; }
}
PATH=$PATH:/usr/sbin
need dnsperf dnsperf
need dnsmasq dnsmasq-base
need ss iproute2
ensure_release_binary

WORKDIR=$(mktemp -d)
SERVER_PIDS=()
cleanup() {
  for pid in "${SERVER_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORKDIR"
}
trap cleanup EXIT

# free_port: a loopback port with nothing bound on it, UDP or TCP
free_port() {
  local port
  for port in $(shuf -i 20000-60000 -n 100); do
    if [ -z "$(ss -Hlnut "sport = :$port")" ]; then
      echo "$port"
      return
    fi
  done
  echo "no free port found" >&2
  return 1
}

# The query set: 1,000 A queries mixing the name forms, every one answered 127.0.0.1 by the
# embedded server (from the name) and by dnsmasq (from the wildcard)
for i in $(seq 1 125); do
  printf '%s A\n' \
    "app$i.127.0.0.1.nip.io" "app$i-127-0-0-1.nip.io" "app$i.127-0-0-1.nip.io" \
    "app$i-7f000001.nip.io" "app$i.127.0.0.1.sslip.io" "app$i-127-0-0-1.sslip.io" \
    "app$i.7f000001.sslip.io" "a.b.app$i.127.0.0.1.nip.io"
done > "$WORKDIR/queries.txt"
head -n 1 "$WORKDIR/queries.txt" > "$WORKDIR/one.txt"

# wait_ready NAME PORT PID: until the server answers a query (at most 30 s)
wait_ready() {
  local deadline=$((SECONDS + 30))
  until dnsperf -s 127.0.0.1 -p "$2" -d "$WORKDIR/one.txt" -n 1 -t 1 2>/dev/null |
    grep -E 'Queries completed: +1 ' >/dev/null; do
    if ! kill -0 "$3" 2>/dev/null; then
      echo "$1 exited before answering:" >&2
      cat "$WORKDIR/$1.log" >&2
      exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "$1 does not answer on 127.0.0.1:$2 after 30 s" >&2
      exit 1
    fi
  done
}

SB_PORT=$(free_port)
"$SANDBOX" -q dns serve --listen "127.0.0.1:$SB_PORT" > "$WORKDIR/sandbox.log" 2>&1 &
SB_PID=$!
SERVER_PIDS+=("$SB_PID")
wait_ready sandbox "$SB_PORT" "$SB_PID"

DM_PORT=$(free_port)
dnsmasq --keep-in-foreground --conf-file=/dev/null --pid-file= --no-resolv --no-hosts \
  --port="$DM_PORT" --listen-address=127.0.0.1 --bind-interfaces \
  --address=/nip.io/127.0.0.1 --address=/sslip.io/127.0.0.1 > "$WORKDIR/dnsmasq.log" 2>&1 &
DM_PID=$!
SERVER_PIDS+=("$DM_PID")
wait_ready dnsmasq "$DM_PORT" "$DM_PID"

# kb PID FIELD: a /proc/PID/status memory field (VmRSS, VmHWM), in kB
kb() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }
# cpu_ticks PID: user + system CPU time of the process so far, in clock ticks
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
rss_before_sb=$(kb "$SB_PID" VmRSS)
rss_before_dm=$(kb "$DM_PID" VmRSS)

# measure NAME PORT PID: one dnsperf run; appends its QPS, p99 (ms), queries completed and
# server CPU ticks to the NAME_* arrays
qps_sandbox=(); p99_sandbox=(); done_sandbox=(); cpu_sandbox=()
qps_dnsmasq=(); p99_dnsmasq=(); done_dnsmasq=(); cpu_dnsmasq=()
measure() {
  local out=$WORKDIR/$1.out before after qps p99 completed lost
  before=$(cpu_ticks "$3")
  dnsperf "${DNSPERF_OPTS[@]}" -p "$2" -d "$WORKDIR/queries.txt" > "$out" 2>&1
  after=$(cpu_ticks "$3")
  qps=$(awk '/Queries per second:/ { print $4 }' "$out")
  completed=$(awk '/Queries completed:/ { print $3 }' "$out")
  lost=$(awk '/Queries lost:/ { print $3, $4 }' "$out")
  # each answered query is a verbose line "> RCODE NAME TYPE LATENCY_SECONDS"
  p99=$(awk '/^> / && $NF ~ /^[0-9.]+$/ { print $NF }' "$out" | sort -g |
    awk '{ a[NR] = $1 } END { i = int(NR * 0.99); if (i < NR * 0.99) i++; if (i < 1) i = 1; printf "%.3f\n", a[i] * 1000 }')
  if ! grep -E 'Response codes: +NOERROR [0-9]+ \(100\.00%\)' "$out" >/dev/null; then
    echo "$1: not every answer is NOERROR:" >&2
    grep -A1 'Response codes' "$out" >&2
    exit 1
  fi
  printf '%s\t%s qps\tp99 %s ms\tcompleted %s\tlost %s\tserver cpu %s ticks\n' \
    "$1" "$qps" "$p99" "$completed" "$lost" "$((after - before))" | tee -a "$RESULTS/dns-runs.log" >&2
  eval "qps_$1+=(\"\$qps\"); p99_$1+=(\"\$p99\"); done_$1+=(\"\$completed\"); cpu_$1+=(\"\$((after - before))\")"
}

: > "$RESULTS/dns-runs.log"
echo "dnsperf ${DNSPERF_OPTS[*]} -d queries.txt (1,000 A queries)" >> "$RESULTS/dns-runs.log"
# alternate the two, and which goes first, so that neither always runs on a busier machine
for rep in $(seq "$REPS"); do
  if [ $((rep % 2)) = 1 ]; then
    measure sandbox "$SB_PORT" "$SB_PID"; measure dnsmasq "$DM_PORT" "$DM_PID"
  else
    measure dnsmasq "$DM_PORT" "$DM_PID"; measure sandbox "$SB_PORT" "$SB_PID"
  fi
done

# server CPU per query over all the runs, in microseconds
us_per_query() { # us_per_query TICKS_ARRAY_NAME DONE_ARRAY_NAME
  local -n ticks=$1 done=$2
  local t q
  t=$(IFS=+; echo "${ticks[*]}" | bc)
  q=$(IFS=+; echo "${done[*]}" | bc)
  awk -v t="$t" -v q="$q" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f\n", t / hz / q * 1e6 }'
}
mb() { awk -v k="$1" 'BEGIN { printf "%.1f\n", k / 1024 }'; }

table_start dns "DNS (issue 5)" \
  "dnsperf $(dnsperf -h 2>&1 | awk '/^Version/ { print $2 }'), dnsmasq $(dnsmasq --version | awk 'NR == 1 { print $3 }')" \
  "peer value"
PEER="dnsmasq address=/nip.io/127.0.0.1"
row_in qps "queries per second, UDP (higher is better)" \
  "$(median "${qps_sandbox[@]}" | awk '{ printf "%.0f", $1 }')" "$PEER" \
  "$(median "${qps_dnsmasq[@]}" | awk '{ printf "%.0f", $1 }')" ">= 1.0x"
row_in ms "p99 latency at that load (lower is better)" \
  "$(median "${p99_sandbox[@]}")" "$PEER" "$(median "${p99_dnsmasq[@]}")" ""
row_in "µs" "server CPU time per query (lower is better)" \
  "$(us_per_query cpu_sandbox done_sandbox)" "$PEER" "$(us_per_query cpu_dnsmasq done_dnsmasq)" ""
row_in MB "resident memory before the load, VmRSS" \
  "$(mb "$rss_before_sb")" "$PEER" "$(mb "$rss_before_dm")" ""
row_in MB "peak resident memory after the load, VmHWM" \
  "$(mb "$(kb "$SB_PID" VmHWM)")" "$PEER" "$(mb "$(kb "$DM_PID" VmHWM)")" "< 15 MB"
{
  echo
  echo "Load: \`dnsperf ${DNSPERF_OPTS[*]}\` (the same command for both servers, no -Q:"
  echo "as fast as each answers), 1,000 A queries mixing the nip.io and sslip.io name forms,"
  echo "every one answered 127.0.0.1; dnsperf shares the $(nproc) cores with the server."
} >> "$TABLE"
cat "$TABLE"
