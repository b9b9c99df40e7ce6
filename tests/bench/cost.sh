#!/usr/bin/env bash
# Where one SUBSCRIBE's (or REGISTER's) server CPU goes: per thread, user against kernel, context
# switches and system calls by kind, counted by the kernel (`perf stat`), not sampled.
#
# Usage: tests/bench/cost.sh [subscribe|register] [BIN] [RUNS=3]
#        (default BIN: target/release/busylamp)
# Environment: BENCH_CALLS=20000 operations per run, BENCH_CONCURRENCY=200 in flight,
#              BENCH_USERS=5000 (register), BENCH_PIN=1 (server on one core, sipp on the other:
#              tests/interop/lib.sh), BENCH_RECORD=FILE also samples the runs with
#              `perf record --call-graph dwarf` on the server (large: keep the runs short).
#
# subscribe: the presence bench's closed loop (tests/bench/presence_subscribe.xml, open auth,
# each call a new subscription: SUBSCRIBE → 200 + the initial NOTIFY answered 200);
# register: the register bench's (REGISTER → 401 → REGISTER with MD5 digest → 200, every user
# registered once before the runs).
#
# Around each sipp run, `perf stat --per-thread -p PID` counts every thread of the server:
# task-clock (CPU), context switches, all system calls and the ones a message costs (receive,
# send, epoll, futex, the disk's pwrite/fsync). /proc gives each thread's user and kernel
# time. Printed per operation, medians over the runs; threads of one name added up (tokio's
# workers are all "busylamp"). A thread that exits during a run is not counted.
#
# Loopback only; sipp runs are bounded by -m, -timeout and timeout(1); perf and the server are
# stopped by PID on exit.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../interop/lib.sh
source "$HERE/../interop/lib.sh"

OP="${1:-subscribe}"
BIN="${2:-$(bl_repo_top)/target/release/busylamp}"
RUNS="${3:-3}"
CALLS="${BENCH_CALLS:-20000}"
CONC="${BENCH_CONCURRENCY:-200}"
USERS="${BENCH_USERS:-5000}"
[[ "$OP" == subscribe || "$OP" == register ]] || bl_die "operation must be subscribe or register"
[[ -x "$BIN" ]] || bl_die "no busylamp binary at $BIN (cargo build --release)"
bl_need_tools sipp perf

WORK="$(mktemp -d -t busylamp-cost.XXXXXX)"
PERF_PID=""
cleanup() {
    [[ -z "$PERF_PID" ]] || kill -INT "$PERF_PID" 2>/dev/null || true
    bl_stop_all_servers
    rm -rf "$WORK"
}
trap cleanup EXIT

port="$(bl_free_port)"
sport="$(bl_free_port "$port")"
if [[ "$OP" == subscribe ]]; then
    bl_gen_busylamp_config "$WORK/busylamp.toml" "$port" "$WORK/data" 0 '' open
    bl_presence_toml >>"$WORK/busylamp.toml"
    # one distinct watcher/presentity pair per subscription of every run
    awk -v n="$((CALLS * RUNS))" -v d="$BL_DOMAIN" 'BEGIN {
        print "SEQUENTIAL"
        for (i = 1; i <= n; i++) printf "c%07d;cp%07d;%s\n", i, i, d
    }' >"$WORK/ops.csv"
else
    bl_gen_csv "$WORK/ops.csv" "$USERS"
    bl_gen_busylamp_config "$WORK/busylamp.toml" "$port" "$WORK/data" "$USERS"
    # like register.sh: no presence from registrations (Kamailio's register config has none)
    printf '\n[pua.usrloc]\nenabled = false\n' >>"$WORK/busylamp.toml"
fi
bl_start_busylamp "$BIN" "$WORK/busylamp.toml" "$WORK/busylamp.log"
bl_wait_ready "$BL_SERVER_PID" "$port" 30 || bl_die "busylamp did not start (see $WORK/busylamp.log)"
pid="$BL_SERVER_PID"
echo "== cost of a $OP, per thread — $(date -u +%FT%TZ), $BIN"
bl_pin_note

one_run() { # TAG CALLS
    if [[ "$OP" == subscribe ]]; then
        bl_sipp_run "$1" "$port" u1 "$HERE/presence_subscribe.xml" "$WORK/ops.csv" "$2" "$WORK" 120 \
            -default_behaviors all,-bye -buff_size 8388608 -p "$sport" -users "$CONC"
    else
        bl_sipp_register "$1" "$port" u1 "$WORK/ops.csv" "$2" "$WORK" 120 -p "$sport" -users "$CONC"
    fi
}
if [[ "$OP" == register ]]; then
    one_run prefill "$USERS"
    bl_sipp_clean "$USERS" || bl_die "prefill failed: $BL_SIPP_OK of $USERS"
fi

# user and kernel ticks per thread: "tid name utime stime"
ticks() {
    local t
    for t in /proc/"$pid"/task/*; do
        printf '%s %s %s\n' "${t##*/}" "$(tr ' ' '_' <"$t/comm")" "$(sed 's/^.*) //' "$t/stat" | awk '{ print $12, $13 }')"
    done 2>/dev/null
}
EVENTS=task-clock,context-switches,page-faults,raw_syscalls:sys_enter
for s in recvfrom recvmmsg recvmsg sendto sendmsg sendmmsg epoll_wait futex madvise pwrite64 fdatasync fsync; do
    EVENTS+=",syscalls:sys_enter_$s"
done
HZ="$(getconf CLK_TCK)"
for r in $(seq 1 "$RUNS"); do
    ticks >"$WORK/before"
    rss0="$(bl_rss_kb "$pid")"
    "${BL_LOAD_TASKSET[@]}" perf stat --per-thread -x';' -e "$EVENTS" -p "$pid" -o "$WORK/stat$r" &
    PERF_PID=$!
    if [[ -n "${BENCH_RECORD:-}" && "$r" == 1 ]]; then
        "${BL_LOAD_TASKSET[@]}" perf record -q --call-graph dwarf,16384 -F "${BENCH_RECORD_HZ:-999}" -p "$pid" -o "$BENCH_RECORD" \
            >"$WORK/record.log" 2>&1 &
        REC_PID=$!
    fi
    sleep 0.5 # perf attached
    one_run "run$r" "$CALLS"
    kill -INT "$PERF_PID"; wait "$PERF_PID" || true; PERF_PID=""
    if [[ -n "${REC_PID:-}" ]]; then kill -INT "$REC_PID"; wait "$REC_PID" || true; REC_PID=""; fi
    ticks >"$WORK/after"
    rss1="$(bl_rss_kb "$pid")"
    bl_sipp_clean "$CALLS" || { bl_log "run $r not clean ($BL_SIPP_OK ok)"; bl_sipp_explain >&2; continue; }
    printf 'run %s: %s %ss in %ss (%s/s), retransmissions %s, resident memory +%s B per operation\n' "$r" "$BL_SIPP_OK" "$OP" "$BL_SIPP_ELAPSED" \
        "$(awk -v n="$BL_SIPP_OK" -v e="$BL_SIPP_ELAPSED" 'BEGIN { printf "%.0f", n / e }')" "$BL_SIPP_RETRANS" \
        "$(((rss1 - rss0) * 1024 / BL_SIPP_OK))"
    # rows: run thread-name metric value-per-op
    awk -F';' -v n="$BL_SIPP_OK" -v r="$r" '
        NF >= 4 && $1 ~ /-[0-9]+$/ {
            name = $1; sub(/-[0-9]+$/, "", name); gsub(/ /, "_", name)
            ev = $4; sub(/^syscalls:sys_enter_/, "", ev); sub(/^raw_syscalls:sys_enter/, "syscalls", ev)
            v = $2; if (v ~ /not/) next
            if (ev == "task-clock") { ev = "cpu_us"; v = v * 1000 }   # msec → µs
            s[name " " ev] += v
        }
        END { for (k in s) printf "%s %s %.3f\n", r, k, s[k] / n }
    ' "$WORK/stat$r" >>"$WORK/rows"
    awk -v n="$BL_SIPP_OK" -v hz="$HZ" -v r="$r" '
        NR == FNR { u[$1] = $3; k[$1] = $4; next }
        { uu[$2] += $3 - u[$1]; kk[$2] += $4 - k[$1] }
        END { for (t in uu) { printf "%s %s user_us %.3f\n", r, t, uu[t] / hz / n * 1e6
                              printf "%s %s kernel_us %.3f\n", r, t, kk[t] / hz / n * 1e6 } }
    ' "$WORK/before" "$WORK/after" >>"$WORK/rows"
done
[[ -s "$WORK/rows" ]] || bl_die "no clean run"

echo
echo "per $OP (medians over the clean runs; threads of one name added up):"
awk '
    { key = $2 " " $3; v[key] = v[key] " " $4; th[$2] = 1; m[$3] = 1 }
    function median(list,    a, n, i, j, t) {
        n = split(list, a, " ")
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    END {
        split("cpu_us user_us kernel_us context-switches page-faults syscalls recvfrom recvmmsg recvmsg sendto sendmsg sendmmsg epoll_wait futex madvise pwrite64 fdatasync fsync", order, " ")
        printf "%-16s", "thread"; for (i = 1; i in order; i++) printf " %9s", substr(order[i], 1, 9); printf "\n"
        for (t in th) {
            printf "%-16s", t
            for (i = 1; i in order; i++) { k = t " " order[i]; x = (k in v) ? median(v[k]) : 0; tot[i] += x; printf " %9.2f", x }
            printf "\n"
        }
        printf "%-16s", "(all)"; for (i = 1; i in order; i++) printf " %9.2f", tot[i]; printf "\n"
    }' "$WORK/rows"
echo "cpu_us: perf task-clock; user_us/kernel_us: /proc ticks (1/${HZ} s resolution); load average $(cut -d' ' -f1-3 /proc/loadavg)"
