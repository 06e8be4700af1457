#!/usr/bin/env bash
# Every benchmark in one run: lifecycle (cold/warm up, down, binary start, DNS memory),
# images, manifests, DNS. Each figure beside its peer, measured in the same run on the same
# machine. Writes bench/results/summary.md (the tables) and summary.json (every figure).
#
#   bench/run.sh                 REPS (default 5) repetitions per figure, medians reported
#   bench/run.sh lifecycle dns   only these
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
cargo build --release --locked -q
ALL=(lifecycle images apply dns cluster dev)
WANTED=("${@:-${ALL[@]}}")
[ $# -gt 0 ] || WANTED=("${ALL[@]}")
started=$(date +%s)
for b in "${WANTED[@]}"; do
  echo "=== bench/$b.sh" >&2
  "$ROOT/bench/$b.sh" >&2
done
{
  echo "# Benchmarks, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(. /etc/os-release; echo "$PRETTY_NAME"), kernel $(uname -r), Docker $(docker version --format '{{.Server.Version}}'). Rerun: \`bench/run.sh\`."
  for b in "${WANTED[@]}"; do echo; cat "$RESULTS/$b.md"; done
} > "$RESULTS/summary.md"
python3 - "$RESULTS" "${WANTED[@]}" > "$RESULTS/summary.json" <<'PY'
import json, sys, datetime
results, names = sys.argv[1], sys.argv[2:]
out = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "benchmarks": {}}
for n in names:
    with open(f"{results}/{n}.jsonl") as f:
        out["benchmarks"][n] = [json.loads(line) for line in f if line.strip()]
json.dump(out, sys.stdout, indent=2)
PY
cat "$RESULTS/summary.md"
echo "(all benchmarks: $(( $(date +%s) - started )) s; $RESULTS/summary.md and summary.json)" >&2
