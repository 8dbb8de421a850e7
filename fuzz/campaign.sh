#!/usr/bin/env bash
# A fuzz campaign: every target for SECONDS (default 600) of CPU, JOBS targets at a time
# (default 2), each starting from its committed corpus (corpus/TARGET) plus any seed
# directories given as SEED_TARGET=dir; then each corpus minimised (cargo fuzz cmin) back into
# corpus/TARGET. Prints, per target, the runs, the coverage and features libFuzzer reached,
# and any crash (saved under artifacts/TARGET/). Needs cargo-fuzz; run from anywhere.
#
#   fuzz/campaign.sh                    # all targets, 10 minutes each
#   SECONDS_EACH=60 fuzz/campaign.sh session data
set -u
cd "$(dirname "$0")"
EACH=${SECONDS_EACH:-600} JOBS=${JOBS:-2}
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(command data session policy milter bounce config)
export RUSTC_BOOTSTRAP=1
LOG=${LOG:-/tmp/fuzz-campaign}
mkdir -p "$LOG"
cargo fuzz build -O >"$LOG/build.log" 2>&1 || { tail -20 "$LOG/build.log"; exit 1; }
run() {
  local t=$1 seed_var="SEED_$1" dict=()
  mkdir -p "corpus/$t" "artifacts/$t"
  [ "$t" = command ] && dict=(-dict=dict/smtp.dict)
  # shellcheck disable=SC2086 # the seed directory may be unset
  cargo fuzz run -O "$t" "corpus/$t" ${!seed_var:-} -- -max_total_time="$EACH" \
    -print_final_stats=1 "${dict[@]}" >"$LOG/$t.log" 2>&1
  echo "$t: exit $?"
}
pids=()
for t in "${TARGETS[@]}"; do
  run "$t" &
  pids+=($!)
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 5; done
done
wait
for t in "${TARGETS[@]}"; do
  cargo fuzz cmin -O "$t" "corpus/$t" >"$LOG/$t.cmin.log" 2>&1
  runs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$LOG/$t.log" | grep -o '[0-9]*$')
  last=$(grep -E '^#[0-9]+' "$LOG/$t.log" | tail -1)
  cov=$(echo "$last" | grep -o 'cov: [0-9]*')
  ft=$(echo "$last" | grep -o 'ft: [0-9]*')
  crash=$(ls "artifacts/$t" 2>/dev/null | wc -l)
  echo "$t: runs ${runs:-?}, $cov, $ft, corpus $(ls "corpus/$t" | wc -l) files after cmin, artifacts $crash"
done
