#!/usr/bin/env bash
# A/B of two busylamp builds on one bench: what a change bought, measured.
#
# Usage: tests/bench/ab.sh BIN_A BIN_B [register|presence|calls] [PAIRS=5]
#
# Runs the bench script with --busylamp-only alternately for A and B (A B, B A, A B, ...: the
# order flips each pair so that a machine getting busier or quieter favours neither), PAIRS
# times each, and prints each run's figures and the medians side by side. The figure compared
# is server CPU per operation (what does not depend on the load generator); the bench's other
# figures are printed as they came. Extra environment (BENCH_*) is passed to the bench, e.g.
# BENCH_PIN=1 for capacity per core, BENCH_CALLS=20000 for shorter runs.
#
# Loopback only, every run bounded by the bench script itself.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

A="${1:?usage: ab.sh BIN_A BIN_B [register|presence|calls] [PAIRS]}"
B="${2:?usage: ab.sh BIN_A BIN_B [register|presence|calls] [PAIRS]}"
BENCH="${3:-register}"
PAIRS="${4:-5}"
[[ -x "$A" && -x "$B" ]] || { echo "ERROR: both builds must be executable files" >&2; exit 1; }

# The line of each bench's result table that carries busylamp's CPU per operation, and the
# column (counted from the end of the line) it is in.
case "$BENCH" in
register) SCRIPT="$HERE/register.sh"; export BENCH_SETTLE="${BENCH_SETTLE:-0}" BENCH_EXACT_HEAP="${BENCH_EXACT_HEAP:-0}" ;;
presence) SCRIPT="$HERE/presence.sh" ;;
calls) SCRIPT="$HERE/calls.sh" ;;
*) echo "ERROR: bench must be register, presence or calls" >&2; exit 1 ;;
esac

OUT="$(mktemp -d -t busylamp-ab.XXXXXX)"
echo "== A/B on $BENCH.sh, $PAIRS pairs — $(date -u +%Y-%m-%dT%H:%M:%SZ); logs in $OUT"
echo "A: $A ($(date -u -r "$A" +%FT%TZ))"
echo "B: $B ($(date -u -r "$B" +%FT%TZ))"

# cpu_per_op LOG: busylamp's server CPU µs per operation from a bench log.
cpu_per_op() {
    case "$BENCH" in
    register) awk '$1 == "busylamp" && $NF ~ /^[0-9]+$/ { v = $NF } END { print v }' "$1" ;;
    # their result rows: figure, kamailio, busylamp, ratio
    presence) awk '/^\(a\) server CPU us per SUBSCRIBE/ { print $(NF - 1) }' "$1" ;;
    calls) awk '/^\(a\) server CPU us per call/ { print $(NF - 1) }' "$1" ;;
    esac
}

RA=(); RB=()
run_one() { # LABEL BIN N
    local log="$OUT/$1-$3.log" v
    BUSYLAMP="$2" bash "$SCRIPT" --busylamp-only --no-build >"$log" 2>&1 || true
    v="$(cpu_per_op "$log")"
    printf '  %s run %s: %s µs server CPU per operation  (%s)\n' "$1" "$3" "${v:-n/a}" "$(grep -m1 -E 'REGISTER/s|SUBSCRIBE/s|calls/s' "$log" | tr -s ' ' | cut -c1-90 || true)"
    [[ -n "$v" ]] && { if [[ "$1" == A ]]; then RA+=("$v"); else RB+=("$v"); fi; }
    return 0
}
for i in $(seq 1 "$PAIRS"); do
    if ((i % 2)); then run_one A "$A" "$i"; run_one B "$B" "$i"; else run_one B "$B" "$i"; run_one A "$A" "$i"; fi
done

median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) print "n/a"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
MA="$(median "${RA[@]}")"; MB="$(median "${RB[@]}")"
echo "median server CPU per operation: A $MA µs (${RA[*]:-}), B $MB µs (${RB[*]:-})"
if [[ "$MA" =~ ^[0-9.]+$ && "$MB" =~ ^[0-9.]+$ ]]; then
    awk -v a="$MA" -v b="$MB" 'BEGIN { printf "B / A = %.3f (%+.1f %%)\n", b / a, (b / a - 1) * 100 }'
fi
echo "load average during the runs: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the box makes every figure noisier)"
