#!/usr/bin/env bash
# Call benchmark: calls through the proxy while every callee's busy lamps
# are watched.  Kamailio 5.6 (registrar + Record-Routing tm proxy + dialog +
# pua_dialoginfo publishing into its own presence server,
# tests/bench/kamailio-calls.cfg) vs busylamp (registrar + proxy + dialog
# tracker + in-process dialog-info publisher + presence server), same
# machine, same sipp scenarios, one after the other.
#
# Usage: tests/bench/calls.sh [--kamailio-only|--busylamp-only] [--build|--no-build] [--keep]
#   --kamailio-only / --busylamp-only  measure one system only
#   --build          always `cargo build --release` first; --no-build: never.
#                    Default: build only if target/release/busylamp is missing
#                    ($BUSYLAMP, if set, is used as is).  If busylamp is
#                    missing or does not start, the Kamailio half still runs.
#   --keep           keep the work directory (logs, sipp output, captures)
# Environment (defaults):
#   BUSYLAMP                       busylamp binary
#   BENCH_CALLEES=100              callees C (c000001..), all registered from
#                                  one sipp UAS (calls_uas.xml)
#   BENCH_WATCHERS_PER_CALLEE=10   BLF watchers per callee (one sipp,
#                                  calls_watch.xml: C x W subscriptions)
#   BENCH_REPEATS=3                rounds per figure (median reported)
#   BENCH_CALLS=2000               calls per closed-loop round (a)
#   BENCH_CONC_STEPS="30 60 90 120 180 240 360"  calls in flight (sipp -users) tried
#                                  by the calibration of (a), one round of
#                                  BENCH_CALIB_CALLS=1000 calls each
#   BENCH_CALL_CONCURRENCY         set: no calibration, (a) runs with this
#   BENCH_RING_MS=200              the callee rings this long before 200 OK
#   BENCH_HOLD_MS=200              the caller hangs up this long after the ACK
#   BENCH_LAMP_RATE=20             calls/s offered in (b) (well under saturation)
#   BENCH_LAMP_CALLS=200           calls per (b) round
#   BENCH_KAM_CHILDREN=2           Kamailio UDP workers (register.sh found 2
#                                  fastest on this 2-core VM)
#   BENCH_KAM_SHM_MB=1024          Kamailio shared memory (-m)
#   BENCH_BUDGET=570               seconds; steps that no longer fit are skipped
#   BENCH_LAMP_ONLY=0              1: measure (b) only, skip (a) (its calibration,
#                                  rounds and open-loop check): for lamp latency work
#   BENCH_RT=0                     1-99: both servers in the real-time class
#                                  (SCHED_RR) at this priority: busylamp with
#                                  [server] realtime_priority, Kamailio under
#                                  chrt -r (all its processes, as its real_time=7).
#                                  Where other work shares the server's core, a woken
#                                  server otherwise waits up to a scheduler tick
#                                  (4 ms at HZ=250) behind it: that, not the server,
#                                  made (b)'s p99 here (README "Calls and lamps").
#                                  Needs root or CAP_SYS_NICE.
#   BENCH_SCHED=0                  1 (with BENCH_PIN=1): during (b), record the server
#                                  core's context switches and wake-ups (perf) and
#                                  print, per round, what ran on that core while the
#                                  slow (> 3 ms) early NOTIFYs waited, and how long
#                                  the server was runnable but off its core
#                                  (calls_lamp_sched.py)
#
# Set-up, per system (the server is started once and keeps its state from
# one step to the next): the C callees REGISTER (calls_register.xml, from the
# port of the callee UAS, so their contacts are that sipp); the UAS starts
# (calls_uas.xml: 180, BENCH_RING_MS, 200 OK, ACK, BYE, 200); C x W watchers
# SUBSCRIBE Event: dialog to the callees (calls_watch.xml: one sipp that
# answers every NOTIFY 200 for the whole run).  Callers are not registered;
# each call is a sipp call of calls_uac.xml (INVITE with SDP -> 180 -> 200 ->
# ACK -> BENCH_HOLD_MS -> BYE -> 200) to callee i (i cycles over 1..C) from
# caller a<i>.  Per call the server proxies ~12 messages, publishes the
# caller's and the callee's dialog state (early, confirmed, terminated) and
# sends W NOTIFYs per callee state change (each answered by the watcher).
#
# What is measured, in this order:
#  (b) lamp latency, BENCH_REPEATS rounds of BENCH_LAMP_CALLS calls at a
#      fixed BENCH_LAMP_RATE calls/s (sipp -r, open loop), captured on
#      loopback (tcpdump -i lo: the UAS's 180s to the proxy and the proxy's
#      NOTIFYs to the watchers) and paired by calls_lamp.py: for each call
#      and each watcher of its callee, the first NOTIFY whose dialog-info
#      shows that call (call-id) in state early:
#        latency = NOTIFY on the wire - the 180 on the wire (at the proxy)
#      p50 and p99 over all NOTIFYs of the fan-out, p99 of the last NOTIFY
#      per call; plus watchers that never saw early ("missing"), lamps going
#      back (a NOTIFY showing a call in an earlier state than before) and
#      CSeq regressions.  Median over the rounds.  The capture also holds the
#      watchers' 200s, so the details split the latency: was the early NOTIFY
#      held back until the watcher answered the previous NOTIFY of its
#      subscription (a server with one NOTIFY in flight per subscription,
#      after the callee's "trying" sent on the INVITE), and the server's own
#      time once it was free to send.
#  (a) calls/s at 0 failures, closed loop: N calls in flight (sipp -users),
#      BENCH_CALLS calls per round; calls/s = completed calls / wall time of
#      the sipp run.  N is calibrated per system (a call spends ~0.45 s
#      ringing and talking, so N bounds the rate at ~N/0.45 calls/s, while
#      too many calls in flight push a server past T1 = 500 ms and into
#      retransmissions): one short round per N in BENCH_CONC_STEPS, the
#      highest N still clean with at most 1 % retransmitted calls and still
#      gaining 10 % over the N before it wins.  A round counts only if clean: the
#      caller sipp exits 0 with every call successful and 0 failed, and the
#      watchers' sipp had no failed subscription and no unexpected message
#      during the round.  Server CPU per call from /proc (all its processes;
#      Kamailio's PUBLISHes to itself included).  Then an open-loop check at
#      90 % of the median (sipp -r) must end clean and reach 90 % of its rate:
#      10 s of calls at that rate (at least 1,000), the rate achieved counted
#      over the time calls were started (the sipp run less one call's length,
#      BENCH_RING_MS + BENCH_HOLD_MS: the last call started still rings and
#      talks before the run ends).
#
# Ratios: throughput busylamp/Kamailio, latency and CPU Kamailio/busylamp: so
# > 1 always means busylamp is better.
#
# Caveats printed with the results: sipp (caller, callee UAS and watchers:
# three processes) shares the 2 cores with the server; UDP only; no
# authentication (busylamp [auth] trusted = ["127.0.0.0/8"] for calls,
# register, subscribe and publish (trusted_for), Kamailio without
# auth_check); Kamailio keeps everything in memory (usrloc, dialog,
# pua, presence), busylamp writes bindings, subscriptions and NOTIFY
# CSeq/version reservations to its database (redb by default).  A watcher sipp answers at most a few
# thousand NOTIFYs/s: at W = 10 and three lamp changes per call, that bounds
# (a) for both servers.
#
# Loopback only; every sipp run is bounded by -m or -timeout and timeout(1);
# tcpdump, the background sipps and the servers are stopped by PID on exit.

# shellcheck disable=SC2086 # $pids (a PID list) is split on purpose
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../interop/lib.sh
source "$HERE/../interop/lib.sh"
# shellcheck disable=SC2034 # read by bl_start_kamailio (lib.sh)
BL_KAM_CFG="$HERE/kamailio-calls.cfg"
SC_REG="$HERE/calls_register.xml"
SC_UAS="$HERE/calls_uas.xml"
SC_UAC="$HERE/calls_uac.xml"
SC_WATCH="$HERE/calls_watch.xml"
LAMP_PY="$HERE/calls_lamp.py"

bl_bench_args "$0" "$@"

CALLEES="${BENCH_CALLEES:-100}"
WPC="${BENCH_WATCHERS_PER_CALLEE:-10}"
REPEATS="${BENCH_REPEATS:-3}"
CALLS="${BENCH_CALLS:-2000}"
CONC_STEPS="${BENCH_CONC_STEPS:-30 60 90 120 180 240 360}"
CONC_FIXED="${BENCH_CALL_CONCURRENCY:-}"
CALIB_CALLS="${BENCH_CALIB_CALLS:-1000}"
RING_MS="${BENCH_RING_MS:-200}"
HOLD_MS="${BENCH_HOLD_MS:-200}"
LAMP_RATE="${BENCH_LAMP_RATE:-20}"
LAMP_CALLS="${BENCH_LAMP_CALLS:-200}"
KAM_CHILDREN="${BENCH_KAM_CHILDREN:-2}"
# pinned to one core, Kamailio gets one worker (more only queue on the same core)
[[ "$BL_PIN" == 1 && -z "${BENCH_KAM_CHILDREN:-}" ]] && KAM_CHILDREN=1
KAM_SHM_MB="${BENCH_KAM_SHM_MB:-1024}"
BUDGET="${BENCH_BUDGET:-570}"
LAMP_ONLY="${BENCH_LAMP_ONLY:-0}"
RT_PRIO="${BENCH_RT:-0}"
SCHED_TRACE="${BENCH_SCHED:-0}"
RUN_TIMEOUT=90
WATCH_QUIET_S=15 # calls_watch.xml: a watcher unsubscribes after 15 s without NOTIFY
SIPP_BUF=4194304
WATCHERS=$((CALLEES * WPC))

bl_need_tools kamailio sqlite presence tcpdump python3

bl_bench_workdir busylamp-calls-bench # WORK; BG_PIDS: tcpdump and background sipps

remaining() { echo $((BUDGET - SECONDS)); }
run_timeout() { # a sipp -timeout that still fits in the budget (0: none)
    local r; r=$(($(remaining) - 30))
    ((r > RUN_TIMEOUT)) && r=$RUN_TIMEOUT
    ((r < 10)) && r=0
    echo "$r"
}
port_drops() { # PORT: datagrams dropped so far by the UDP sockets bound to PORT (/proc/net/udp)
    awk -v p="$(printf ':%04X' "$1")" 'NR > 1 && substr($2, length($2) - 4) == p { d += $NF } END { print d + 0 }' /proc/net/udp
}
drops_snapshot() { # SERVER_PORT -> "server watchers uas" drop counters
    echo "$(port_drops "$1") $(port_drops "${WPORT:-0}") $(port_drops "${UAS_PORT:-0}")"
}

# results: RES[system:key]
declare -A RES=()
NOTES=()

# ------------------------------------------------------------------ header
HOSTINFO_CPU="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
echo "== busylamp call + BLF benchmark — $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "machine:  nproc=$(nproc), kernel $(uname -r), ${HOSTINFO_CPU:-unknown CPU}, $(awk '/^MemTotal/ { printf "%.1f GiB RAM", $2 / 1048576 }' /proc/meminfo)"
bl_versions
bl_pin_note
BIN=""
BL_STATUS=""
if ((!DO_BL)); then
    BL_STATUS="skipped (--kamailio-only)"
elif BIN="$(bl_resolve_busylamp "$BUILD")"; then
    echo "busylamp: $BIN ($(timeout 5 "$BIN" --version 2>/dev/null | head -1 || echo 'version unknown'); git $(git -C "$(bl_repo_top)" rev-parse --short HEAD 2>/dev/null || echo none); built $(date -u -r "$BIN" +%Y-%m-%dT%H:%M:%SZ))"
else
    BIN=""
    BL_STATUS="missing (no binary; set BUSYLAMP or build with cargo build --release)"
    echo "busylamp: MISSING — only the Kamailio half runs"
fi
((RT_PRIO > 0)) && echo "sched:    both servers in the real-time class (SCHED_RR, priority $RT_PRIO; BENCH_RT)"
echo "load:     C = $CALLEES callees x W = $WPC watchers ($WATCHERS subscriptions); ring ${RING_MS} ms, hold ${HOLD_MS} ms;"
echo "          (a) $CALLS calls/round, in flight: ${CONC_FIXED:-calibrated over $CONC_STEPS}; (b) $LAMP_CALLS calls/round at $LAMP_RATE/s; $REPEATS rounds; UDP, no auth"
echo

# injection files (shared by both systems)
awk -v n="$CALLEES" -v d="$BL_DOMAIN" 'BEGIN {
    print "SEQUENTIAL"; for (i = 1; i <= n; i++) printf "c%06d;c%06d;%s\n", i, i, d }' >"$WORK/callees.csv"
awk -v n="$CALLEES" -v w="$WPC" -v d="$BL_DOMAIN" 'BEGIN {
    print "SEQUENTIAL"
    for (i = 1; i <= n; i++) for (k = 1; k <= w; k++) printf "w%06d%03d;c%06d;%s\n", i, k, i, d }' >"$WORK/watchers.csv"
awk -v n="$CALLEES" -v d="$BL_DOMAIN" 'BEGIN {
    print "SEQUENTIAL"; for (i = 1; i <= n; i++) printf "c%06d;%s;a%06d;answer\n", i, d, i }' >"$WORK/calls.csv"

SIPP_COMMON=(-buff_size "$SIPP_BUF")

# watcher_health: failed subscriptions and unexpected messages of the
# watcher sipp so far -> "FAILED UNEXP".  sipp prints its screen only when it
# ends, so this reads its -trace_err file: an aborted call or a timeout that
# fails one (not the quiet-time timeout that jumps to the unsubscribe) is a
# failed subscription
watcher_health() {
    local failed unexp
    failed=$(grep -E 'Aborting call|timeout' "$WATCH_ERR" 2>/dev/null | grep -vc 'jumping to label' || true)
    unexp=$(grep -c 'unexpected message' "$WATCH_ERR" 2>/dev/null || true)
    echo "${failed:-0} ${unexp:-0}"
}

# call_run TAG PORT CALLS [load args...]: one bounded calls_uac.xml run; sets
# RATE (0 if not clean), CLEAN, SKIPPED, UDP_DROPS, W_FAILED, W_UNEXP
call_run() {
    local tag="$1" port="$2" calls="$3" tmo d0 h0 h1 p0 p1 a0 b0 c0 a1 b1 c1
    shift 3
    tmo="$(run_timeout)"
    if ((tmo == 0)); then
        bl_log "time budget exhausted: skipping $tag"
        RATE=0; CLEAN=0; SKIPPED=1; UDP_DROPS=0; DROPS_BY=""; W_FAILED=0; W_UNEXP=0; return 0
    fi
    SKIPPED=0
    d0="$(bl_udp_rcvbuf_errors)"
    p0="$(drops_snapshot "$port")"
    h0="$(watcher_health)"
    bl_sipp_run "$tag" "$port" u1 "$SC_UAC" "$WORK/calls.csv" "$calls" "$WORK" "$tmo" \
        -d "$HOLD_MS" -default_behaviors all,-bye "${SIPP_COMMON[@]}" "$@"
    sleep 1 # the last calls' terminated NOTIFYs reach the watchers
    h1="$(watcher_health)"
    UDP_DROPS=$(($(bl_udp_rcvbuf_errors) - d0))
    p1="$(drops_snapshot "$port")"
    read -r a0 b0 c0 <<<"$p0"; read -r a1 b1 c1 <<<"$p1"
    DROPS_BY="server $((a1 - a0)), watchers $((b1 - b0)), UAS $((c1 - c0))"
    W_FAILED=$((${h1% *} - ${h0% *}))
    W_UNEXP=$((${h1#* } - ${h0#* }))
    if bl_sipp_clean "$calls" && ((W_FAILED == 0 && W_UNEXP == 0)); then
        CLEAN=1
        RATE=$(awk -v n="$BL_SIPP_OK" -v e="$BL_SIPP_ELAPSED" 'BEGIN { printf "%.0f", n / e }')
    else
        CLEAN=0; RATE=0
        bl_log "$tag: not clean (watchers: $W_FAILED failed, $W_UNEXP unexpected messages)"
        bl_sipp_explain >&2
    fi
}

# ------------------------------------------------------ set-up: phones, lamps
UAS_PORT=""
WPORT=""
setup() { # SYS PORT: register the callees, start the UAS and the watchers
    local sys="$1" port="$2" tmo deadline n
    UAS_PORT="$(bl_free_port "$port")"
    WPORT="$(bl_free_port "$port" "$UAS_PORT")"
    bl_log "$sys: $CALLEES callees register from port $UAS_PORT"
    bl_sipp_run "$sys-register" "$port" u1 "$SC_REG" "$WORK/callees.csv" "$CALLEES" "$WORK" 30 \
        -p "$UAS_PORT" -r 500 -rp 1000 -l 200 -default_behaviors all,-bye "${SIPP_COMMON[@]}"
    if ! bl_sipp_clean "$CALLEES"; then
        bl_log "$sys: registration failed"; bl_sipp_explain >&2; return 1
    fi
    tmo=$(($(remaining) + 30))
    (cd "$WORK" && exec timeout $((tmo + 15)) "${BL_LOAD_TASKSET[@]}" sipp -sf "$SC_UAS" -i "$BL_HOST" -p "$UAS_PORT" -t u1 \
        -d "$RING_MS" -default_behaviors all,-bye "${SIPP_COMMON[@]}" -max_socket 4096 \
        -timeout "${tmo}s" -nostdin -trace_err -error_file "$WORK/uas-$sys-errors.log") \
        >"$WORK/uas-$sys.log" 2>&1 &
    UAS_PID=$!; BG_PIDS+=("$UAS_PID")
    WATCH_LOG="$WORK/watch-$sys.log"
    WATCH_ERR="$WORK/watch-$sys-errors.log"
    (cd "$WORK" && exec timeout $((tmo + WATCH_QUIET_S + 30)) "${BL_LOAD_TASKSET[@]}" sipp "$BL_HOST:$port" -sf "$SC_WATCH" \
        -inf "$WORK/watchers.csv" -i "$BL_HOST" -p "$WPORT" -t u1 -m "$WATCHERS" -r 500 -rp 1000 \
        -default_behaviors all,-bye,-abortunexp "${SIPP_COMMON[@]}" -timeout "$((tmo + WATCH_QUIET_S))s" \
        -nostdin -trace_logs -log_file "$WORK/watch-$sys-logs.log" -trace_err -error_file "$WATCH_ERR") \
        >"$WATCH_LOG" 2>&1 &
    WATCH_PID=$!; BG_PIDS+=("$WATCH_PID")
    deadline=$((SECONDS + 30))
    n=0
    while :; do
        n=$(grep -c '^established' "$WORK/watch-$sys-logs.log" 2>/dev/null || true)
        ((n >= WATCHERS)) && break
        if ((SECONDS >= deadline)) || ! kill -0 "$WATCH_PID" 2>/dev/null; then
            bl_log "$sys: only ${n:-0}/$WATCHERS watchers subscribed"; return 1
        fi
        sleep 0.2
    done
    kill -0 "$UAS_PID" 2>/dev/null || { bl_log "$sys: the callee UAS did not start: $(tail -3 "$WORK/uas-$sys.log")"; return 1; }
    bl_log "$sys: $n/$WATCHERS watchers subscribed; UAS on $UAS_PORT, watchers on $WPORT"
    sleep 1
}

teardown() { # SYS: stop the UAS and the watchers (by PID) and report them
    local sys="$1"
    bl_stop_bg "$UAS_PID"
    bl_stop_bg "$WATCH_PID"
    local unexp
    unexp=$(grep -c 'unexpected message' "$WATCH_ERR" 2>/dev/null || true)
    bl_sipp_parse "$WATCH_LOG"
    RES[$sys:watchers]="$(grep -E '^ +NOTIFY <-' "$WATCH_LOG" | awk '{ n += $3; r += $4 } END { printf "%d NOTIFYs received (%d retransmitted)", n, r }'), ${unexp:-0} unexpected, $(watcher_health | cut -d' ' -f1) failed subscriptions"
    bl_sipp_parse "$WORK/uas-$sys.log"
    RES[$sys:uas]="$BL_SIPP_OK calls answered, $BL_SIPP_FAILED failed"
}

# --------------------------------------------------------- (b) lamp latency
# BENCH_SCHED=1: the server core's context switches over a round (perf, monotonic
# clock; the offset to the capture's wall clock is noted when it starts)
SCHED_PID=""
sched_start() { # TAG
    SCHED_PID=""
    [[ "$SCHED_TRACE" == 1 && "$BL_PIN" == 1 ]] || return 0
    python3 -c 'import time; print(time.clock_gettime(time.CLOCK_REALTIME) - time.clock_gettime(time.CLOCK_MONOTONIC))' >"$WORK/$1.sched-offset"
    perf record -q -a -k mono -e sched:sched_switch -e sched:sched_wakeup -o "$WORK/$1.sched.data" 2>"$WORK/$1.sched.log" &
    SCHED_PID=$!; BG_PIDS+=("$SCHED_PID")
    sleep 0.5
}
sched_stop() {
    [[ -n "$SCHED_PID" ]] || return 0
    kill -INT "$SCHED_PID" 2>/dev/null || true
    wait "$SCHED_PID" 2>/dev/null || true
}
sched_report() { # TAG PCAP PORT: what ran on the server's core while slow lamps waited
    local tag="$1" tids="" p t
    [[ -n "$SCHED_PID" && -s "$WORK/$tag.sched.data" ]] || return 0
    for p in $(bl_pids_tree "$BL_SERVER_PID"); do
        for t in /proc/"$p"/task/*; do [[ -e "$t" ]] && tids+="${tids:+,}${t##*/}"; done
    done
    perf script -i "$WORK/$tag.sched.data" -F cpu,time,event,trace >"$WORK/$tag.sched.txt" 2>/dev/null || return 0
    "${BL_LOAD_TASKSET[@]}" python3 "$HERE/calls_lamp_sched.py" "$WORK/$tag.sched.txt" "$(cat "$WORK/$tag.sched-offset")" \
        "$2" "$3" "$UAS_PORT" "$WPORT" "$tids" "$BL_SERVER_CPU" 2>&1 | tail -n 25 || true
}

measure_lamp() { # SYS PORT
    local sys="$1" port="$2" r tag pcap out td deadline line kv
    local p50s=() p99s=() lp50s=() lp99s=() miss=0 deliv=0 expct=0 regr=0 cregr=0 fails=0 retr=0 firsts=() gated=() gwait=() ag50=() ag99=()
    local need=$((LAMP_CALLS / LAMP_RATE + 10))
    for r in $(seq 1 "$REPEATS"); do
        if (($(remaining) < need + 60)); then
            bl_log "time budget: skipping lamp round $r for $sys"; break
        fi
        tag="$sys-lamp$r"; pcap="$WORK/$tag.pcap"; out="$WORK/$tag.txt"
        "${BL_LOAD_TASKSET[@]}" tcpdump -i lo -n -s 0 -B 65536 -U -Z root -w "$pcap" \
            "udp and ((src port $UAS_PORT and dst port $port) or (src port $port and dst port $WPORT) or (src port $WPORT and dst port $port))" \
            2>"$WORK/$tag.tcpdump" &
        td=$!; BG_PIDS+=("$td")
        deadline=$((SECONDS + 5))
        until grep -q 'listening on' "$WORK/$tag.tcpdump" 2>/dev/null; do
            if ((SECONDS >= deadline)) || ! kill -0 "$td" 2>/dev/null; then
                bl_log "tcpdump did not start: $(cat "$WORK/$tag.tcpdump")"; bl_stop_bg "$td"; RES[$sys:lamp]="n/a (tcpdump)"; return 0
            fi
            sleep 0.1
        done
        sched_start "$tag"
        call_run "$tag" "$port" "$LAMP_CALLS" -r "$LAMP_RATE" -rp 1000 -l $((LAMP_RATE * 5))
        sleep 1
        bl_stop_bg "$td"
        sched_stop
        ((CLEAN)) || fails=$((fails + 1))
        retr=$((retr + BL_SIPP_RETRANS))
        "${BL_LOAD_TASKSET[@]}" python3 "$LAMP_PY" "$pcap" "$port" "$UAS_PORT" "$WPORT" "$WPC" >"$out" 2>&1 || bl_log "lamp analysis failed: $(tail -3 "$out")"
        sched_report "$tag" "$pcap" "$port" >>"$out"
        sed 's/^/    /' "$out" >&2
        line="$(grep '^LAMP' "$out" || true)"
        [[ -n "$line" ]] || continue
        declare -A F=()
        for kv in $line; do [[ "$kv" == *=* ]] && F[${kv%%=*}]="${kv#*=}"; done
        [[ "${F[p50_ms]}" != n/a ]] && p50s+=("${F[p50_ms]}")
        [[ "${F[p99_ms]}" != n/a ]] && p99s+=("${F[p99_ms]}")
        [[ "${F[last_p50_ms]}" != n/a ]] && lp50s+=("${F[last_p50_ms]}")
        [[ "${F[last_p99_ms]}" != n/a ]] && lp99s+=("${F[last_p99_ms]}")
        [[ "${F[early_in_first]}" != n/a ]] && firsts+=("${F[early_in_first]}")
        [[ "${F[gated]:-n/a}" != n/a ]] && gated+=("${F[gated]}")
        [[ "${F[gate_wait_p50_ms]:-n/a}" != n/a ]] && gwait+=("${F[gate_wait_p50_ms]}")
        [[ "${F[after_gate_p50_ms]:-n/a}" != n/a ]] && ag50+=("${F[after_gate_p50_ms]}")
        [[ "${F[after_gate_p99_ms]:-n/a}" != n/a ]] && ag99+=("${F[after_gate_p99_ms]}")
        miss=$((miss + F[missing])); deliv=$((deliv + F[delivered])); expct=$((expct + F[expected]))
        regr=$((regr + F[regressions])); cregr=$((cregr + F[cseq_regressions]))
        unset F
        bl_log "$sys (b) round $r: $line"
    done
    RES[$sys:lamp_p50]="$(bl_median "${p50s[@]}")"
    RES[$sys:lamp_p99]="$(bl_median "${p99s[@]}")"
    RES[$sys:lamp_last_p50]="$(bl_median "${lp50s[@]}")"
    RES[$sys:lamp_last_p99]="$(bl_median "${lp99s[@]}")"
    RES[$sys:lamp_order]="$regr/$cregr"
    RES[$sys:lamp]="rounds ${#p50s[@]}/$REPEATS at $LAMP_RATE calls/s; early NOTIFYs $deliv/$expct (missing $miss), lamps going back $regr, CSeq regressions $cregr, rounds not clean $fails, caller retransmissions $retr;
        medians: share of early NOTIFYs that were the first NOTIFY about their call $(bl_median "${firsts[@]}"), held back until the watcher answered the previous NOTIFY $(bl_median "${gated[@]}") (180 -> that 200: p50 $(bl_median "${gwait[@]}") ms), server's own time (180 or that 200 -> early NOTIFY) p50 $(bl_median "${ag50[@]}") ms, p99 $(bl_median "${ag99[@]}") ms"
}

# ------------------------------------------------------------ (a) calls/s
# calibrate SYS PORT: one short closed-loop round per concurrency in
# CONC_STEPS, from the lowest; a level is acceptable when the round is clean
# and the callers retransmitted at most 1 % of the calls (a server answering
# later than T1 = 500 ms is past its knee); stop at the first level that is
# not acceptable or gains less than 10 % (then the level before it is
# kept: the server is at its knee there).  Sets BEST_CONC.
calibrate() {
    local sys="$1" port="$2" c best_rate=0 shown=()
    BEST_CONC=""
    for c in $CONC_STEPS; do
        kill -0 "$BL_SERVER_PID" 2>/dev/null || break
        (($(remaining) > 120)) || { bl_log "budget: stopping the concurrency calibration"; break; }
        call_run "$sys-calib$c" "$port" "$CALIB_CALLS" -users "$c"
        ((SKIPPED)) && break
        bl_log "$sys calibration: $c in flight -> $RATE calls/s (clean=$CLEAN, retrans $BL_SIPP_RETRANS, watchers $W_FAILED failed/$W_UNEXP unexpected, UDP drops $UDP_DROPS: $DROPS_BY)"
        if ((!CLEAN || BL_SIPP_RETRANS * 100 > CALIB_CALLS)); then
            shown+=("$c:${RATE}(not clean, retrans $BL_SIPP_RETRANS)"); break
        fi
        shown+=("$c:$RATE")
        # past the knee: more calls in flight only queue; keep the level before
        ((RATE * 10 < best_rate * 11)) && break
        best_rate=$RATE; BEST_CONC=$c
    done
    RES[$sys:calib]="${shown[*]:-none} -> ${BEST_CONC:-none}"
}

measure_calls() { # SYS PORT
    local sys="$1" port="$2" pid="$BL_SERVER_PID" pids i t0 t1 rates=() shown=() us=() clean=0 med open="n/a" drops=0 retr=0 conc
    pids="$(bl_pids_tree "$pid")"
    if [[ -n "$CONC_FIXED" ]]; then
        conc="$CONC_FIXED"
    else
        calibrate "$sys" "$port"
        conc="${BEST_CONC:-${CONC_STEPS%% *}}"
    fi
    RES[$sys:conc]="$conc"
    for i in $(seq 1 "$REPEATS"); do
        kill -0 "$pid" 2>/dev/null || { bl_log "$sys died"; break; }
        t0="$(bl_cpu_ticks $pids)"
        call_run "$sys-calls$i" "$port" "$CALLS" -users "$conc"
        t1="$(bl_cpu_ticks $pids)"
        ((SKIPPED)) && break
        drops=$((drops + UDP_DROPS)); retr=$((retr + BL_SIPP_RETRANS))
        if ((CLEAN)); then
            clean=$((clean + 1)); rates+=("$RATE"); shown+=("$RATE")
            us+=("$(awk -v t="$((t1 - t0))" -v n="$BL_SIPP_OK" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.0f", (n > 0 ? t / hz / n * 1e6 : 0) }')")
        else
            shown+=("FAIL($BL_SIPP_OK/$BL_SIPP_FAILED,w$W_FAILED/$W_UNEXP)")
        fi
        bl_log "$sys (a) round $i: $RATE calls/s (clean=$CLEAN, $BL_SIPP_OK ok, $BL_SIPP_FAILED failed, ${BL_SIPP_ELAPSED}s, retrans $BL_SIPP_RETRANS, watchers $W_FAILED failed/$W_UNEXP unexpected, UDP drops $UDP_DROPS ($DROPS_BY), CPU ticks $((t1 - t0)))"
    done
    med="$(bl_median "${rates[@]}")"
    med="${med%.*}"
    if [[ -n "$med" ]] && kill -0 "$pid" 2>/dev/null; then
        local target=$((med * 9 / 10)) n
        # 10 s at the target rate, whatever BENCH_CALLS is: capped at 2,000 calls a fast
        # server's check lasted ~3 s, and the last call's 0.4 s of ringing and talking
        # alone kept the rate counted over the whole run under 90 %.
        n=$((target * 10)); ((n > 1000)) || n=1000
        bl_log "$sys: open-loop check at $target calls/s (90 % of median), $n calls"
        call_run "$sys-calls-open" "$port" "$n" -r "$target" -rp 1000 -l $((conc * 4))
        # Calls started per second: the run less the last call's own length.
        ((CLEAN)) && RATE=$(awk -v n="$BL_SIPP_OK" -v e="$BL_SIPP_ELAPSED" -v c="$((RING_MS + HOLD_MS))" \
            'BEGIN { s = e - c / 1000; printf "%.0f", (s > 0 ? n / s : 0) }')
        if ((SKIPPED)); then open="skipped"
        elif ((CLEAN && RATE * 10 >= target * 9)); then open="$target/s for $n: OK (achieved $RATE/s, retrans $BL_SIPP_RETRANS, UDP drops $UDP_DROPS)"
        elif ((CLEAN)); then open="$target/s for $n: NOT SUSTAINED: 0 failures but only $RATE/s achieved (retrans $BL_SIPP_RETRANS, UDP drops $UDP_DROPS)"
        else open="$target/s for $n: FAILED ($BL_SIPP_OK ok, $BL_SIPP_FAILED failed, watchers $W_FAILED failed/$W_UNEXP unexpected)"; fi
    fi
    RES[$sys:calls]="${med:-n/a}"
    RES[$sys:calls_runs]="$(IFS=' '; echo "${shown[*]:-none}") (clean $clean/$REPEATS, caller retrans $retr, UDP drops $drops)"
    RES[$sys:calls_us]="$(bl_median "${us[@]}")"
    RES[$sys:calls_open]="$open"
}

measure() { # SYS PORT
    if ! setup "$1" "$2"; then
        NOTES+=("$1: set-up failed (see $WORK)"); KEEP=1; return 0
    fi
    kill -0 "$BL_SERVER_PID" 2>/dev/null && measure_lamp "$1" "$2"
    [[ "$LAMP_ONLY" == 1 ]] || { kill -0 "$BL_SERVER_PID" 2>/dev/null && measure_calls "$1" "$2"; }
    teardown "$1"
}

# ------------------------------------------------------------- Kamailio
if ((DO_KAM)); then
    port="$(bl_free_port)"
    bl_gen_kam_presence_sqlite "$WORK/kam.sqlite" 0
    bl_log "starting kamailio (registrar + proxy + dialog + pua_dialoginfo + presence, children=$KAM_CHILDREN) on udp+tcp $BL_HOST:$port"
    kam_taskset=("${BL_SERVER_TASKSET[@]}")
    # BENCH_RT: every Kamailio process in the real-time class (what its real_time=7 does)
    ((RT_PRIO > 0)) && BL_SERVER_TASKSET=(chrt -r "$RT_PRIO" "${BL_SERVER_TASKSET[@]}")
    bl_start_kamailio "$WORK" "$port" "$KAM_CHILDREN" "sqlite:///$WORK/kam.sqlite" "$WORK/kamailio.log" \
        -m "$KAM_SHM_MB" -A "OUTBOUND_PROXY=\"sip:$BL_HOST:$port\"" -A "SERVER_ADDRESS=\"sip:$BL_HOST:$port\""
    BL_SERVER_TASKSET=("${kam_taskset[@]}")
    if bl_wait_ready "$BL_SERVER_PID" "$port" 30; then
        measure kamailio "$port"
        kill -0 "$BL_SERVER_PID" 2>/dev/null || NOTES+=("kamailio died during the benchmark (see $WORK/kamailio.log)")
    else
        bl_log "kamailio did not start; see $WORK/kamailio.log"
        tail -n 20 "$WORK/kamailio.log" >&2 || true
        NOTES+=("kamailio did not start"); KEEP=1
    fi
    bl_stop_server "$BL_SERVER_PID"
fi

# ------------------------------------------------------------- busylamp
if [[ -n "$BIN" ]]; then
    port="$(bl_free_port)"
    bl_gen_busylamp_config "$WORK/busylamp.toml" "$port" "$WORK/busylamp-data" 0 '' digest '["127.0.0.0/8"]' \
        '["calls", "register", "subscribe", "publish"]'
    bl_presence_toml "sip:$BL_HOST:$port" >>"$WORK/busylamp.toml" # [presence], [proxy] keys: tests/interop/lib.sh
    bl_proxy_toml >>"$WORK/busylamp.toml"
    ((RT_PRIO > 0)) && sed -i "/^\[server\]$/a realtime_priority = $RT_PRIO" "$WORK/busylamp.toml"
    bl_log "starting busylamp ($BIN) on udp+tcp $BL_HOST:$port"
    bl_start_busylamp "$BIN" "$WORK/busylamp.toml" "$WORK/busylamp.log"
    if bl_wait_ready "$BL_SERVER_PID" "$port" 30; then
        measure busylamp "$port"
        kill -0 "$BL_SERVER_PID" 2>/dev/null || BL_STATUS="died during the benchmark (see $WORK/busylamp.log)"
    else
        BL_STATUS="did not become ready (see $WORK/busylamp.log)"
        tail -n 20 "$WORK/busylamp.log" >&2 || true
        KEEP=1
    fi
    bl_stop_server "$BL_SERVER_PID"
fi

# --------------------------------------------------------------- report
num() { [[ "${1:-}" =~ ^[0-9]+(\.[0-9]+)?$ ]]; }
ratio() { # A B -> A/B with 2 decimals, n/a unless both numeric and B > 0
    if num "${1:-}" && num "${2:-}" && awk -v b="$2" 'BEGIN { exit !(b > 0) }'; then
        awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'
    else echo "n/a"; fi
}
row() { # LABEL KEY DIRECTION(up: busylamp/kamailio, down: kamailio/busylamp, none)
    local k="${RES[kamailio:$2]:-n/a}" b="${RES[busylamp:$2]:-n/a}" r
    if [[ "$3" == up ]]; then r="$(ratio "$b" "$k")"; else r="$(ratio "$k" "$b")"; fi
    if [[ "$3" == none ]]; then r="-"; else num "$k" || k="n/a"; num "$b" || b="n/a"; fi
    printf '%-50s %12s %12s %8s\n' "$1" "$k" "$b" "$r"
}
echo
echo "== results (medians over $REPEATS rounds; ratio > 1 means busylamp is better:"
echo "   throughput busylamp/kamailio, latency/CPU kamailio/busylamp)"
printf '%-50s %12s %12s %8s\n' figure kamailio busylamp ratio
row "(a) calls/s, closed loop, 0 failures" calls up
row "(a) server CPU us per call" calls_us down
row "(b) 180 -> early NOTIFY p50 ms (all NOTIFYs)" lamp_p50 down
row "(b) 180 -> early NOTIFY p99 ms (all NOTIFYs)" lamp_p99 down
row "(b) 180 -> last early NOTIFY of a call p50 ms" lamp_last_p50 down
row "(b) 180 -> last early NOTIFY of a call p99 ms" lamp_last_p99 down
row "(b) lamps going back / CSeq regressions" lamp_order none
[[ -z "$BL_STATUS" ]] || printf '%-9s %s\n' busylamp "$BL_STATUS"
echo
echo "details:"
for sys in kamailio busylamp; do
    [[ -n "${RES[$sys:calls]:-}${RES[$sys:lamp]:-}" ]] || continue
    echo "  $sys:"
    echo "    (a) calibration (in flight:calls/s): ${RES[$sys:calib]:-n/a}"
    echo "    (a) rounds (calls/s) with ${RES[$sys:conc]:-?} in flight: ${RES[$sys:calls_runs]:-n/a}"
    echo "    (a) open-loop check at 90 % of the median: ${RES[$sys:calls_open]:-n/a}"
    echo "    (b) ${RES[$sys:lamp]:-n/a}"
    echo "    watchers: ${RES[$sys:watchers]:-n/a}; callee UAS: ${RES[$sys:uas]:-n/a}"
done
for n in "${NOTES[@]}"; do echo "  note: $n"; done
echo
echo "notes: sipp (callers, callee UAS, watchers) shares the $(nproc) cores with the server; UDP only; no authentication;"
echo "       kamailio: children=$KAM_CHILDREN, shm ${KAM_SHM_MB} MB, everything in memory, pua PUBLISHes to itself over loopback;"
echo "       busylamp: bindings, subscriptions and NOTIFY CSeq/version reservations in ${BENCH_STORAGE_BACKEND:-redb} (data_dir on $(df -P "$WORK" | awk 'NR == 2 { print $1 }'));"
echo "       (b) latency = NOTIFY carrying the call in state early on the wire - the callee's 180 on the wire (loopback capture);"
echo "       UDP drops = kernel RcvbufErrors over the step, system-wide (other processes on the machine count too)."
echo "total time: ${SECONDS}s"
