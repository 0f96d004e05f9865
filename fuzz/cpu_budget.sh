#!/usr/bin/env bash
# Runs one fuzz target until it has used a budget of CPU time (user + system,
# read from /proc), not wall time: on a shared machine wall time says little.
#
#   fuzz/cpu_budget.sh TARGET CPU_SECONDS [libFuzzer options...]
#
# Needs the targets built (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz build -O)
# and a corpus in fuzz/corpus/TARGET (python3 fuzz/seed_corpus.py). The log
# goes to fuzz/artifacts/TARGET/log, crashes next to it; the last lines
# printed are the run's numbers (CPU seconds, executions, edges, corpus).
set -euo pipefail

target=${1:?target}
budget=${2:?CPU seconds}
shift 2
fuzz=$(cd "$(dirname "$0")" && pwd)
binary=$fuzz/target/x86_64-unknown-linux-gnu/release/$target
corpus=$fuzz/corpus/$target
artifacts=$fuzz/artifacts/$target
mkdir -p "$corpus" "$artifacts"
log=$artifacts/log

# -max_total_time is only a backstop: the budget below ends the run.
nice -n 10 "$binary" "$corpus" -artifact_prefix="$artifacts/" -rss_limit_mb=2048 -malloc_limit_mb=2048 \
    -timeout=10 -max_total_time=$((budget * 10)) -print_final_stats=1 "$@" >"$log" 2>&1 &
pid=$!
ticks=$(getconf CLK_TCK)
cpu=0
while kill -0 "$pid" 2>/dev/null; do
    # Fields 14 and 15 of /proc/PID/stat (after the parenthesised name).
    if stat=$(cat "/proc/$pid/stat" 2>/dev/null); then
        read -r utime stime < <(echo "${stat##*) }" | awk '{print $12, $13}')
        cpu=$(((utime + stime) / ticks))
        if ((cpu >= budget)); then
            kill -INT "$pid"
            break
        fi
    fi
    sleep 5
done
status=0
wait "$pid" || status=$?

echo "target: $target"
echo "cpu_s: $cpu (exit $status)"
grep -E '^stat::number_of_executed_units|^stat::peak_rss_mb|^stat::new_units_added' "$log" || true
grep -E '^#[0-9]+' "$log" | tail -1 || true
grep -E 'ERROR|crash-|timeout-|oom-|leak-|deadly signal' "$log" || echo "findings: none"
echo "corpus files: $(find "$corpus" -type f | wc -l)"
