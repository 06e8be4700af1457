# Shared helpers for the benchmark scripts: timing with medians, and result tables.
# Every figure is measured beside its peer in the same run, on the same machine.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SANDBOX=${SANDBOX:-$ROOT/target/release/sandbox}
REPS=${REPS:-5}
RESULTS=${RESULTS:-$ROOT/bench/results}
mkdir -p "$RESULTS"

# median_of CMD...: runs CMD $REPS times (with `prepare` before each run when defined), prints
# the median wall time in seconds
median_of() {
  local times=()
  for _ in $(seq "$REPS"); do
    if declare -F prepare >/dev/null; then prepare >/dev/null 2>&1; fi
    local s e
    s=$(date +%s.%N)
    "$@" >/dev/null 2>&1 || { echo "benchmark command failed: $*" >&2; return 1; }
    e=$(date +%s.%N)
    times+=("$(echo "$e - $s" | bc)")
  done
  printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f\n", m}'
}

# median VALUES...: the median of numbers
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f\n", m}'; }

# json_number VALUE: VALUE when it is a number, else null (a ratio over zero is "n/a")
json_number() { [[ $1 =~ ^[0-9.]+$ ]] && echo "$1" || echo null; }

# row NAME SANDBOX_SECONDS PEER_NAME PEER_SECONDS TARGET: one Markdown table row and one JSON line
row() {
  local ratio
  ratio=$(awk -v a="$2" -v b="$4" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')
  if [ "$ratio" = n/a ]; then
    # a floor measured alone: no peer
    printf '| %s | %.3f s | %s | - | - | %s |\n' "$1" "$2" "$3" "$5" >> "$TABLE"
  else
    printf '| %s | %.3f s | %s | %.3f s | %sx | %s |\n' "$1" "$2" "$3" "$4" "$ratio" "$5" >> "$TABLE"
  fi
  printf '{"figure":"%s","sandbox_s":%s,"peer":"%s","peer_s":%s,"ratio":%s,"target":"%s"}\n' \
    "${1//\\/}" "$2" "${3//\\/}" "$4" "$(json_number "$ratio")" "$5" >> "$JSON"
}

# row_in UNIT NAME SANDBOX_VALUE PEER_NAME PEER_VALUE TARGET: like `row`, for figures that are
# not times (values printed as given, followed by UNIT); the ratio is still sandbox over peer
row_in() {
  local ratio
  ratio=$(awk -v a="$3" -v b="$5" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')
  printf '| %s | %s %s | %s | %s %s | %sx | %s |\n' "$2" "$3" "$1" "$4" "$5" "$1" "$ratio" "$6" >> "$TABLE"
  printf '{"figure":"%s","unit":"%s","sandbox":%s,"peer":"%s","peer_value":%s,"ratio":%s,"target":"%s"}\n' \
    "${2//\\/}" "$1" "$(json_number "$3")" "${4//\\/}" "$(json_number "$5")" "$(json_number "$ratio")" "$6" >> "$JSON"
}

# table_start FILE_STEM TITLE [ENVIRONMENT [PEER_COLUMN]]: ENVIRONMENT replaces the Docker
# version in the caption line, PEER_COLUMN the "peer time" heading
table_start() {
  TABLE=$RESULTS/$1.md
  JSON=$RESULTS/$1.jsonl
  : > "$JSON"
  local env=${3:-Docker $(docker version --format '{{.Server.Version}}')}
  {
    echo "## $2"
    echo
    echo "$(date -u +%Y-%m-%d), $(nproc) cores, $(uname -r), $env, median of $REPS"
    echo
    echo "| figure | sandbox | peer | ${4:-peer time} | ratio | target |"
    echo "|---|---|---|---|---|---|"
  } > "$TABLE"
}

# render_hello IMAGE: the hello fixture's manifests as the seeds' scripts render them (sed),
# with IMAGE, already in the node, in place of hello:0.0.1
render_hello() {
  sed -e 's/\${GREETING}/hello from sandbox/' \
    -e "s|image: hello:0.0.1|image: $1\n          imagePullPolicy: Never|" \
    "$ROOT/fixtures/apps/hello/k8s/all-in-one.yaml"
}

# the release binary of the checked-out code: built when missing or stale (cargo does nothing
# when it is current; a binary left from older code would measure that code instead)
ensure_release_binary() {
  if [ "$SANDBOX" = "$ROOT/target/release/sandbox" ]; then
    (cd "$ROOT" && cargo build --release --locked -q)
  fi
  [ -x "$SANDBOX" ]
}
