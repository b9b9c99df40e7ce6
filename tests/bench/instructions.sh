#!/usr/bin/env bash
# Instructions per registration, counted (not sampled): busylamp under valgrind's callgrind.
#
# Usage: tests/bench/instructions.sh [BIN] [RUNS=3]     (default BIN: target/release/busylamp)
# Environment: BENCH_OP=register (or subscribe: new subscriptions, presence_subscribe.xml, open
#              auth, each SUBSCRIBE → 200 + the initial NOTIFY answered 200; no prefill),
#              BENCH_USERS=1000, BENCH_CALLS=2000 operations per run, BENCH_CONCURRENCY=10,
#              BENCH_KEEP=DIR keeps each run's callgrind.out (for callgrind_annotate --inclusive),
#              BENCH_USRLOC=0 turns presence from registrations off.
#
# This VM has no hardware counters (`perf stat -e instructions` is "not supported"), and CPU
# time per registration moves by ±20 % with the neighbours. Callgrind counts every user-space
# instruction of every thread of the server, whatever the machine is doing. Kernel time (the
# socket calls, fsync) is not in the count; `tests/bench/threads.sh` measures it.
#
# Starts the server under callgrind with instrumentation off and registers every user once;
# then per run: instrumentation on, counters zeroed, one closed-loop sipp run of REGISTER → 401
# → REGISTER → 200 (few in flight: under valgrind the server is ~50x slower), dump. Prints per
# registration: all instructions, the storage writer's (its redb commits) and the rest (the
# runtime: receive, parse, transactions, digest, registrar, answers); then the medians. The
# rest is steady to ~1 % between runs of one build. The writer's part moves by ~10 %: it
# depends on how many registrations share a commit, and with so few in flight under valgrind
# that is ~2 (at full speed many more), so it is higher here than at full speed.
#
# Loopback only; sipp runs are bounded by -m, -timeout and timeout(1); the server is stopped by
# PID on exit.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../interop/lib.sh
source "$HERE/../interop/lib.sh"

BIN="${1:-$(bl_repo_top)/target/release/busylamp}"
RUNS="${2:-3}"
USERS="${BENCH_USERS:-1000}"
CALLS="${BENCH_CALLS:-2000}"
CONC="${BENCH_CONCURRENCY:-10}"
[[ -x "$BIN" ]] || bl_die "no busylamp binary at $BIN (cargo build --release)"
bl_need_tools sipp valgrind callgrind_control

WORK="$(mktemp -d -t busylamp-instr.XXXXXX)"
cleanup() { bl_stop_all_servers; rm -rf "$WORK"; }
trap cleanup EXIT

port="$(bl_free_port)"
sport="$(bl_free_port "$port")"
OP="${BENCH_OP:-register}"
if [[ "$OP" == subscribe ]]; then
    bl_gen_busylamp_config "$WORK/busylamp.toml" "$port" "$WORK/data" 0 '' open
    bl_presence_toml >>"$WORK/busylamp.toml"
    # a distinct watcher/presentity pair per subscription of every run
    awk -v n="$((CALLS * RUNS))" -v d="$BL_DOMAIN" 'BEGIN {
        print "SEQUENTIAL"
        for (i = 1; i <= n; i++) printf "i%07d;ip%07d;%s\n", i, i, d
    }' >"$WORK/users.csv"
else
    bl_gen_csv "$WORK/users.csv" "$USERS"
    bl_gen_busylamp_config "$WORK/busylamp.toml" "$port" "$WORK/data" "$USERS"
fi
# BENCH_USRLOC=0: no presence from registrations (what the registration costs without it;
# sipp's new Call-ID per registration changes the published document every time).
if [[ "${BENCH_USRLOC:-1}" == 0 ]]; then printf '\n[pua.usrloc]\nenabled = false\n' >>"$WORK/busylamp.toml"; fi
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/callgrind.out.%p" \
    "$BIN" serve --config "$WORK/busylamp.toml" >"$WORK/busylamp.log" 2>&1 &
BL_SERVER_PID=$!
BL_SERVER_PIDS+=("$BL_SERVER_PID")
pid="$BL_SERVER_PID"
bl_wait_ready "$pid" "$port" 120 || bl_die "busylamp did not start (see $WORK/busylamp.log)"
echo "== instructions per $OP (callgrind) — $(date -u +%FT%TZ), $BIN"
one_run() { # TAG CALLS
    if [[ "$OP" == subscribe ]]; then
        bl_sipp_run "$1" "$port" u1 "$HERE/presence_subscribe.xml" "$WORK/users.csv" "$2" "$WORK" 600 \
            -default_behaviors all,-bye -p "$sport" -users "$CONC"
    else
        bl_sipp_register "$1" "$port" u1 "$WORK/users.csv" "$2" "$WORK" 600 -p "$sport" -users "$CONC"
    fi
}
if [[ "$OP" == register ]]; then
    one_run prefill "$USERS"
    bl_sipp_clean "$USERS" || bl_die "prefill failed: $BL_SIPP_OK of $USERS"
fi

rows=(); writers=(); rests=()
for r in $(seq 1 "$RUNS"); do
    callgrind_control -z "$pid" >/dev/null
    callgrind_control -i on "$pid" >/dev/null
    callgrind_control -z "$pid" >/dev/null
    one_run "run$r" "$CALLS"
    callgrind_control -i off "$pid" >/dev/null
    rm -f "$WORK"/callgrind.out.*.*
    callgrind_control -d "run$r" "$pid" >/dev/null
    out="$(ls -t "$WORK"/callgrind.out.*.* | head -1)"
    # The sum of every function's own count (the file's "summary" line is not usable after a
    # zeroing while threads run).
    ir="$(callgrind_annotate --auto=no --threshold=100 "$out" 2>/dev/null |
        awk '/file:function/ { go = 1; next } go && $1 ~ /^[0-9,]+$/ { v = $1; gsub(",", "", v); s += v } END { printf "%d\n", s }')"
    if [[ -n "${BENCH_KEEP:-}" ]]; then mkdir -p "$BENCH_KEEP"; cp "$out" "$BENCH_KEEP/callgrind.out.run$r"; fi
    if ! bl_sipp_clean "$CALLS"; then
        bl_log "run $r not clean ($BL_SIPP_OK ok): not counted"
        continue
    fi
    # The writer thread: everything under its commits (0 when the binary has no symbols).
    writer="$(callgrind_annotate --auto=no --inclusive=yes --threshold=100 "$out" 2>/dev/null |
        awk '!v && /RedbCommit as busylamp::storage::group_commit::Commit>::commit/ { v = $1; gsub(",", "", v) } END { print v + 0 }')"
    per=$((ir / BL_SIPP_OK))
    per_writer=$((${writer:-0} / BL_SIPP_OK))
    rows+=("$per")
    writers+=("$per_writer")
    rests+=("$((per - per_writer))")
    # A retransmission (the machine stalled the server) adds a little work: said, not hidden.
    printf "run %s: %s ${OP}s, per $OP %s instructions: writer %s, rest %s (%s retransmissions)\n" \
        "$r" "$BL_SIPP_OK" "$per" "$per_writer" "$((per - per_writer))" "$BL_SIPP_RETRANS"
done
((${#rows[@]} > 0)) || bl_die "no clean run"
printf "median instructions per $OP: %s (writer %s, rest %s)\n" \
    "$(bl_median -d 0 "${rows[@]}")" "$(bl_median -d 0 "${writers[@]}")" "$(bl_median -d 0 "${rests[@]}")"
