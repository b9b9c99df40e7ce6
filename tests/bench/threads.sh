#!/usr/bin/env bash
# Per thread: where busylamp's CPU and context switches go during a REGISTER storm.
#
# Usage: tests/bench/threads.sh [BIN] [RUNS=3]     (default BIN: target/release/busylamp)
# Environment: BENCH_USERS=5000, BENCH_CALLS=30000 registrations per run, BENCH_CONCURRENCY=200,
#              BENCH_PIN=1 (server on one core, sipp on the other: see tests/interop/lib.sh).
#
# Starts the release server with digest auth (the register bench's config), registers every
# user once, then RUNS closed-loop runs of sipp's REGISTER → 401 → REGISTER → 200; around each
# run it reads every thread's CPU ticks and context switches from /proc/PID/task/TID and prints,
# per thread name (threads of one name added up: tokio workers, sled's IO pool), CPU µs and
# context switches per registration; then the medians over the runs. Threads that exit during
# a run are not counted (tokio's blocking threads after 10 s idle).
#
# Loopback only; sipp runs are bounded by -m, -timeout and timeout(1); the server is stopped by
# PID on exit.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../interop/lib.sh
source "$HERE/../interop/lib.sh"

BIN="${1:-$(bl_repo_top)/target/release/busylamp}"
RUNS="${2:-3}"
USERS="${BENCH_USERS:-5000}"
CALLS="${BENCH_CALLS:-30000}"
CONC="${BENCH_CONCURRENCY:-200}"
[[ -x "$BIN" ]] || bl_die "no busylamp binary at $BIN (cargo build --release)"
bl_need_tools sipp

WORK="$(mktemp -d -t busylamp-threads.XXXXXX)"
cleanup() { bl_stop_all_servers; rm -rf "$WORK"; }
trap cleanup EXIT

port="$(bl_free_port)"
sport="$(bl_free_port "$port")"
bl_gen_csv "$WORK/users.csv" "$USERS"
bl_gen_busylamp_config "$WORK/busylamp.toml" "$port" "$WORK/data" "$USERS"
bl_start_busylamp "$BIN" "$WORK/busylamp.toml" "$WORK/busylamp.log"
bl_wait_ready "$BL_SERVER_PID" "$port" 30 || bl_die "busylamp did not start (see $WORK/busylamp.log)"
pid="$BL_SERVER_PID"
echo "== per-thread cost of a registration — $(date -u +%FT%TZ), $BIN"
bl_pin_note
bl_sipp_register prefill "$port" u1 "$WORK/users.csv" "$USERS" "$WORK" 60 -p "$sport" -users "$CONC"
bl_sipp_clean "$USERS" || bl_die "prefill failed: $BL_SIPP_OK of $USERS"

# snapshot: "tid name switches ticks" per live thread of the server
snapshot() {
    local t
    for t in /proc/"$pid"/task/*; do
        printf '%s %s %s %s\n' "${t##*/}" "$(tr ' ' '_' <"$t/comm")" \
            "$(awk '/ctxt_switches:/ { s += $2 } END { print s + 0 }' "$t/status")" \
            "$(sed 's/^.*) //' "$t/stat" | awk '{ print $12 + $13 }')"
    done 2>/dev/null
}

HZ="$(getconf CLK_TCK)"
for r in $(seq 1 "$RUNS"); do
    snapshot >"$WORK/before"
    bl_sipp_register "run$r" "$port" u1 "$WORK/users.csv" "$CALLS" "$WORK" 60 -p "$sport" -users "$CONC"
    snapshot >"$WORK/after"
    bl_sipp_clean "$CALLS" || { bl_log "run $r not clean ($BL_SIPP_OK ok)"; continue; }
    # per name: (switches, ticks) after minus before, by thread id
    awk -v n="$BL_SIPP_OK" -v hz="$HZ" -v r="$r" '
        NR == FNR { sw[$1] = $3; tk[$1] = $4; next }
        { s[$2] += $3 - sw[$1]; t[$2] += $4 - tk[$1] }
        END { for (k in s) printf "%s %s %.3f %.1f\n", r, k, s[k] / n, t[k] / hz / n * 1e6 }
    ' "$WORK/before" "$WORK/after" >>"$WORK/rows"
    printf 'run %s: %s registrations in %ss\n' "$r" "$BL_SIPP_OK" "$BL_SIPP_ELAPSED"
done
[[ -s "$WORK/rows" ]] || bl_die "no clean run"

echo
printf '%-18s %22s %24s\n' thread "switches/registration" "CPU µs/registration"
awk '
    { key = $2; sw[key] = sw[key] " " $3; us[key] = us[key] " " $4 }
    function median(list,    a, n, i, j, t) {
        n = split(list, a, " ")
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    END {
        for (k in sw) { m_sw = median(sw[k]); m_us = median(us[k]); tsw += m_sw; tus += m_us
            printf "%-18s %22.2f %24.1f\n", k, m_sw, m_us }
        printf "%-18s %22.2f %24.1f\n", "(all threads)", tsw, tus
    }' "$WORK/rows" | sort -k3 -n -r
echo "medians over the clean runs; load average $(cut -d' ' -f1-3 /proc/loadavg)"
