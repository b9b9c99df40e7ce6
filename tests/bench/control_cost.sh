#!/usr/bin/env bash
# What a `follow` client costs the server (issue 13: "with one follow client
# attached during the calls bench, server CPU per call within 5 % of the run
# without it").  The load of tests/bench/calls.sh, busylamp only: C callees
# registered from one sipp UAS (calls_uas.xml), C x W BLF watchers (one sipp,
# calls_watch.xml), calls through the proxy (calls_uac.xml), closed loop with
# a fixed number of calls in flight.  One server for the whole run; rounds
# alternate without and with one `follow` client on the control socket (in
# the order off-on, on-off, off-on, ... so that a drift of the machine
# weighs on both sides alike).  Per round: server CPU per call from /proc
# (utime + stime of the busylamp process, all threads) over the completed
# calls, and calls/s.  Reported: the median of each side and their
# difference, and the median of the differences within each pair (the two
# rounds of a pair run back to back, so a drift of the machine between pairs
# cancels out there).
#
# The follow client is a small Python program (written to the work directory)
# that sends {"method":"follow"} and reads and parses every line as fast as
# it can, as a dashboard would; it counts snapshots, changes and resyncs, and
# runs on the same 2 cores (its CPU is not the server's, but it competes).
#
# Usage: tests/bench/control_cost.sh [--build|--no-build] [--keep]
#   --build      always `cargo build --release` first; --no-build: never.
#                Default: build only if target/release/busylamp is missing
#                ($BUSYLAMP, if set, is used as is).
#   --keep       keep the work directory (logs, sipp output, follow counts)
# Environment (defaults):
#   BUSYLAMP                       busylamp binary
#   BENCH_CALLEES=100              callees (as calls.sh)
#   BENCH_WATCHERS_PER_CALLEE=10   BLF watchers per callee (as calls.sh)
#   BENCH_PAIRS=5                  rounds per side (each pair: one without,
#                                  one with the follow client)
#   BENCH_CALLS=2000               calls per round
#   BENCH_CALL_CONCURRENCY=60      calls in flight (sipp -users); calls.sh
#                                  calibrates it, here it is fixed so that
#                                  both sides carry the same load
#   BENCH_RING_MS=200, BENCH_HOLD_MS=200   as calls.sh
#   BENCH_BUDGET=900               seconds; rounds that no longer fit are skipped
#
# The machine is shared and noisy: read the medians, and the spread of the
# rounds printed with them.  Loopback only; every sipp run is bounded by -m
# and -timeout and timeout(1); the sipps, the follow client and the server
# are stopped by PID on exit.

# shellcheck disable=SC2086 # $pids (a PID list) is split on purpose
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../interop/lib.sh
source "$HERE/../interop/lib.sh"
SC_REG="$HERE/calls_register.xml"
SC_UAS="$HERE/calls_uas.xml"
SC_UAC="$HERE/calls_uac.xml"
SC_WATCH="$HERE/calls_watch.xml"

bl_bench_args "$0" "$@"
((DO_BL)) || bl_die "--kamailio-only: this script measures busylamp only (with and without a follow client)"

CALLEES="${BENCH_CALLEES:-100}"
WPC="${BENCH_WATCHERS_PER_CALLEE:-10}"
PAIRS="${BENCH_PAIRS:-5}"
CALLS="${BENCH_CALLS:-2000}"
CONC="${BENCH_CALL_CONCURRENCY:-60}"
RING_MS="${BENCH_RING_MS:-200}"
HOLD_MS="${BENCH_HOLD_MS:-200}"
BUDGET="${BENCH_BUDGET:-900}"
RUN_TIMEOUT=90
WATCH_QUIET_S=15 # calls_watch.xml: a watcher unsubscribes after 15 s without NOTIFY
SIPP_BUF=4194304
WATCHERS=$((CALLEES * WPC))

bl_need_tools python3

bl_bench_workdir busylamp-control-cost # WORK; BG_PIDS: background sipps and the follow client

remaining() { echo $((BUDGET - SECONDS)); }

# ------------------------------------------------------------ follow client
cat >"$WORK/follow.py" <<'EOF'
"""One `follow` client: reads and parses every line until SIGINT/SIGTERM or
MAX_S seconds, then writes its counts as one JSON line to OUT."""
import json, signal, socket, sys, time

path, out, max_s = sys.argv[1], sys.argv[2], float(sys.argv[3])
counts = {"lines": 0, "bytes": 0, "snapshot": 0, "change": 0, "resync": 0,
          "answers": 0, "errors": 0, "bad": 0}
stop = False

def done(*_):
    global stop
    stop = True

signal.signal(signal.SIGINT, done)
signal.signal(signal.SIGTERM, done)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"follow"}\n')
s.settimeout(0.2)
buf = b""
deadline = time.monotonic() + max_s
while not stop and time.monotonic() < deadline:
    try:
        data = s.recv(1 << 16)
    except socket.timeout:
        continue
    if not data:
        break
    counts["bytes"] += len(data)
    *lines, buf = (buf + data).split(b"\n")
    for line in lines:
        counts["lines"] += 1
        try:
            m = json.loads(line)
        except ValueError:
            counts["bad"] += 1
            continue
        method = m.get("method")
        if method in counts:
            counts[method] += 1
        elif "error" in m:
            counts["errors"] += 1
        else:
            counts["answers"] += 1
with open(out, "w") as f:
    f.write(json.dumps(counts) + "\n")
EOF

# ------------------------------------------------------------------ header
echo "== busylamp: CPU per call with and without a follow client — $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "machine:  nproc=$(nproc), kernel $(uname -r), $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), load average $(cut -d' ' -f1-3 /proc/loadavg)"
bl_versions
BIN="$(bl_resolve_busylamp "$BUILD")" || bl_die "no busylamp binary (set BUSYLAMP or build with cargo build --release)"
echo "busylamp: $BIN ($(timeout 5 "$BIN" --version 2>/dev/null | head -1 || echo 'version unknown'); git $(git -C "$(bl_repo_top)" rev-parse --short HEAD 2>/dev/null || echo none); built $(date -u -r "$BIN" +%Y-%m-%dT%H:%M:%SZ))"
echo "load:     C = $CALLEES callees x W = $WPC watchers ($WATCHERS subscriptions); ring ${RING_MS} ms, hold ${HOLD_MS} ms;"
echo "          $CALLS calls/round, $CONC in flight, $PAIRS rounds per side, alternating; UDP, no auth"
echo

awk -v n="$CALLEES" -v d="$BL_DOMAIN" 'BEGIN {
    print "SEQUENTIAL"; for (i = 1; i <= n; i++) printf "c%06d;c%06d;%s\n", i, i, d }' >"$WORK/callees.csv"
awk -v n="$CALLEES" -v w="$WPC" -v d="$BL_DOMAIN" 'BEGIN {
    print "SEQUENTIAL"
    for (i = 1; i <= n; i++) for (k = 1; k <= w; k++) printf "w%06d%03d;c%06d;%s\n", i, k, i, d }' >"$WORK/watchers.csv"
awk -v n="$CALLEES" -v d="$BL_DOMAIN" 'BEGIN {
    print "SEQUENTIAL"; for (i = 1; i <= n; i++) printf "c%06d;%s;a%06d;answer\n", i, d, i }' >"$WORK/calls.csv"
SIPP_COMMON=(-buff_size "$SIPP_BUF")

# ------------------------------------------------------------------ server
port="$(bl_free_port)"
DATA="$WORK/busylamp-data"
SOCK="$DATA/control.sock"
bl_gen_busylamp_config "$WORK/busylamp.toml" "$port" "$DATA" 0 '' digest '["127.0.0.0/8"]' \
    '["calls", "register", "subscribe", "publish"]'
bl_presence_toml "sip:$BL_HOST:$port" >>"$WORK/busylamp.toml"
bl_proxy_toml >>"$WORK/busylamp.toml"
bl_log "starting busylamp ($BIN) on udp+tcp $BL_HOST:$port"
bl_start_busylamp "$BIN" "$WORK/busylamp.toml" "$WORK/busylamp.log"
SERVER="$BL_SERVER_PID"
bl_wait_ready "$SERVER" "$port" 30 || { tail -n 20 "$WORK/busylamp.log" >&2; bl_die "busylamp did not start"; }
[[ -S "$SOCK" ]] || bl_die "no control socket at $SOCK (see $WORK/busylamp.log)"

# ------------------------------------------------------ set-up (as calls.sh)
UAS_PORT="$(bl_free_port "$port")"
WPORT="$(bl_free_port "$port" "$UAS_PORT")"
bl_log "$CALLEES callees register from port $UAS_PORT"
bl_sipp_run register "$port" u1 "$SC_REG" "$WORK/callees.csv" "$CALLEES" "$WORK" 30 \
    -p "$UAS_PORT" -r 500 -rp 1000 -l 200 -default_behaviors all,-bye "${SIPP_COMMON[@]}"
bl_sipp_clean "$CALLEES" || { bl_sipp_explain >&2; bl_die "registration failed"; }
tmo=$(($(remaining) + 30))
(cd "$WORK" && exec timeout $((tmo + 15)) "${BL_LOAD_TASKSET[@]}" sipp -sf "$SC_UAS" -i "$BL_HOST" -p "$UAS_PORT" -t u1 \
    -d "$RING_MS" -default_behaviors all,-bye "${SIPP_COMMON[@]}" -max_socket 4096 \
    -timeout "${tmo}s" -nostdin -trace_err -error_file "$WORK/uas-errors.log") \
    >"$WORK/uas.log" 2>&1 &
UAS_PID=$!; BG_PIDS+=("$UAS_PID")
WATCH_ERR="$WORK/watch-errors.log"
(cd "$WORK" && exec timeout $((tmo + WATCH_QUIET_S + 30)) "${BL_LOAD_TASKSET[@]}" sipp "$BL_HOST:$port" -sf "$SC_WATCH" \
    -inf "$WORK/watchers.csv" -i "$BL_HOST" -p "$WPORT" -t u1 -m "$WATCHERS" -r 500 -rp 1000 \
    -default_behaviors all,-bye,-abortunexp "${SIPP_COMMON[@]}" -timeout "$((tmo + WATCH_QUIET_S))s" \
    -nostdin -trace_logs -log_file "$WORK/watch-logs.log" -trace_err -error_file "$WATCH_ERR") \
    >"$WORK/watch.log" 2>&1 &
WATCH_PID=$!; BG_PIDS+=("$WATCH_PID")
deadline=$((SECONDS + 30))
while :; do
    n=$(grep -c '^established' "$WORK/watch-logs.log" 2>/dev/null || true)
    ((n >= WATCHERS)) && break
    if ((SECONDS >= deadline)) || ! kill -0 "$WATCH_PID" 2>/dev/null; then
        bl_die "only ${n:-0}/$WATCHERS watchers subscribed"
    fi
    sleep 0.2
done
kill -0 "$UAS_PID" 2>/dev/null || bl_die "the callee UAS did not start: $(tail -3 "$WORK/uas.log")"
bl_log "$n/$WATCHERS watchers subscribed; UAS on $UAS_PORT, watchers on $WPORT"
sleep 1

watcher_failed() { # failed subscriptions and unexpected messages so far (see calls.sh)
    local failed unexp
    failed=$(grep -E 'Aborting call|timeout' "$WATCH_ERR" 2>/dev/null | grep -vc 'jumping to label' || true)
    unexp=$(grep -c 'unexpected message' "$WATCH_ERR" 2>/dev/null || true)
    echo $((${failed:-0} + ${unexp:-0}))
}

# round SIDE I: one closed-loop round; SIDE is off or on (the follow client).
# Appends to US_off/US_on and RATE_off/RATE_on when the round is clean.
US_off=(); US_on=(); RATE_off=(); RATE_on=(); SHOWN=(); FOLLOWED=()
declare -A PAIR_US=() # "I:off" / "I:on" -> us per call of that clean round
round() {
    local side="$1" i="$2" tag="$2-$1" fpid="" t0 t1 w0 w1 us rate tmo counts
    tmo=$(($(remaining) - 30))
    ((tmo > RUN_TIMEOUT)) && tmo=$RUN_TIMEOUT
    if ((tmo < 30)); then bl_log "time budget exhausted: skipping round $tag"; return 0; fi
    if [[ "$side" == on ]]; then
        python3 "$WORK/follow.py" "$SOCK" "$WORK/follow-$tag.json" $((tmo + 30)) \
            2>"$WORK/follow-$tag.err" &
        fpid=$!; BG_PIDS+=("$fpid")
        sleep 1 # connected, and its snapshot read, before the round starts
        kill -0 "$fpid" 2>/dev/null || bl_die "the follow client ended at once: $(cat "$WORK/follow-$tag.err")"
    fi
    w0="$(watcher_failed)"
    t0="$(bl_cpu_ticks "$SERVER")"
    bl_sipp_run "calls-$tag" "$port" u1 "$SC_UAC" "$WORK/calls.csv" "$CALLS" "$WORK" "$tmo" \
        -d "$HOLD_MS" -default_behaviors all,-bye "${SIPP_COMMON[@]}" -users "$CONC"
    sleep 1 # the last calls' terminated NOTIFYs reach the watchers
    t1="$(bl_cpu_ticks "$SERVER")"
    w1="$(watcher_failed)"
    counts=""
    if [[ -n "$fpid" ]]; then
        bl_stop_bg "$fpid"
        counts="$(cat "$WORK/follow-$tag.json" 2>/dev/null || echo '{}')"
        FOLLOWED+=("$tag: $counts")
    fi
    if bl_sipp_clean "$CALLS" && ((w1 == w0)); then
        us=$(awk -v t="$((t1 - t0))" -v n="$BL_SIPP_OK" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.0f", t / hz / n * 1e6 }')
        rate=$(awk -v n="$BL_SIPP_OK" -v e="$BL_SIPP_ELAPSED" 'BEGIN { printf "%.0f", n / e }')
        if [[ "$side" == on ]]; then US_on+=("$us"); RATE_on+=("$rate"); else US_off+=("$us"); RATE_off+=("$rate"); fi
        PAIR_US[$i:$side]="$us"
        SHOWN+=("$tag: $us us/call, $rate calls/s")
        bl_log "round $tag: $us us CPU per call, $rate calls/s, retrans $BL_SIPP_RETRANS ${counts:+; follow $counts}"
    else
        SHOWN+=("$tag: not clean ($BL_SIPP_OK ok, $BL_SIPP_FAILED failed, watchers $((w1 - w0)) failed/unexpected)")
        bl_log "round $tag: not clean"; bl_sipp_explain >&2
    fi
}

for i in $(seq 1 "$PAIRS"); do
    kill -0 "$SERVER" 2>/dev/null || bl_die "busylamp died (see $WORK/busylamp.log)"
    if ((i % 2)); then round off "$i"; round on "$i"; else round on "$i"; round off "$i"; fi
done

bl_stop_bg "$UAS_PID"
bl_stop_bg "$WATCH_PID"

# --------------------------------------------------------------- report
m_off="$(bl_median "${US_off[@]}")"
m_on="$(bl_median "${US_on[@]}")"
echo
echo "== results (medians over the clean rounds of each side; the machine is noisy)"
printf '%-40s %14s %14s %10s\n' figure "without follow" "with follow" difference
diff_pct() { if [[ -n "$1" && -n "$2" ]]; then awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.1f %%", (b - a) / a * 100 }'; else echo n/a; fi; }
printf '%-40s %14s %14s %10s\n' "server CPU us per call" "${m_off:-n/a}" "${m_on:-n/a}" "$(diff_pct "$m_off" "$m_on")"
r_off="$(bl_median "${RATE_off[@]}")"
r_on="$(bl_median "${RATE_on[@]}")"
printf '%-40s %14s %14s %10s\n' "calls/s (closed loop, $CONC in flight)" "${r_off:-n/a}" "${r_on:-n/a}" "$(diff_pct "$r_off" "$r_on")"
PAIR_PCT=()
for i in $(seq 1 "$PAIRS"); do
    [[ -n "${PAIR_US[$i:off]:-}" && -n "${PAIR_US[$i:on]:-}" ]] || continue
    PAIR_PCT+=("$(awk -v a="${PAIR_US[$i:off]}" -v b="${PAIR_US[$i:on]}" 'BEGIN { printf "%.1f", (b - a) / a * 100 }')")
done
m_pair="$(bl_median "${PAIR_PCT[@]}")"
printf '%-40s %14s %14s %10s
' "CPU per call, median of pair differences" "" "" "${m_pair:+$(printf '%+.1f %%' "$m_pair")}"
echo "pair differences (with - without, % of without): ${PAIR_PCT[*]:-none}"
echo "clean rounds: ${#US_off[@]}/$PAIRS without, ${#US_on[@]}/$PAIRS with"
echo
echo "rounds (in the order run):"
for s in "${SHOWN[@]}"; do echo "  $s"; done
echo "follow client (per round: lines read, snapshots, changes, resyncs):"
for s in "${FOLLOWED[@]}"; do echo "  $s"; done
echo
echo "notes: sipp (callers, callee UAS, watchers) and the follow client share the $(nproc) cores with the server;"
echo "       CPU per call = busylamp's utime + stime over the round (and 1 s after it) / completed calls."
echo "total time: ${SECONDS}s"
