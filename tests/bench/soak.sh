#!/usr/bin/env bash
# Soak: does busylamp's disk use (and RSS, fds, threads) settle under a
# steady load, at idle and after a restart?  An appliance runs for months.
#
# Usage: tests/bench/soak.sh [--keep] | --summary=SOAK_TSV
#   Builds nothing: run `cargo build --release` first (or set BUSYLAMP).
#   --keep   keep the work directory (server log, sipp logs, the data dir)
# Environment (defaults):
#   BUSYLAMP                 busylamp binary (target/release/busylamp)
#   SOAK_SECONDS=3600        length of the load phase (with the idle phase and
#                            the restart, the run takes ~SOAK_SECONDS + SOAK_IDLE + 60 s)
#   SOAK_IDLE=120            idle phase after the load (no calls, no PUBLISH;
#                            the watchers stay subscribed)
#   SOAK_RATE=40             calls/s (sipp -r, open loop)
#   SOAK_CALLEES=100         callees c000001.., all registered from one sipp UAS
#   SOAK_WATCHERS_PER_CALLEE=10  BLF watchers per callee (dialog event)
#   SOAK_PRESENTITIES=50     presentities whose presence state changes
#   SOAK_PUBLISH_MS=5000     each changes state (PUBLISH) this often
#   SOAK_SUB_CHURN=5         new presence subscriptions per second (Expires
#                            SOAK_SUB_EXPIRES=60, never refreshed: each ends by
#                            expiry; phones rebooting, watchers coming and going)
#   SOAK_REREG=0             the callees re-register every this many seconds
#                            (a new Call-ID each time: their bindings are
#                            rewritten); 0: never.  Off by default: the UAS
#                            holds the callees' port, so the re-REGISTER comes
#                            from another one, and busylamp then reaches the
#                            callee over that new flow (the re-registering
#                            sipp, which has ended): the calls fail with 408.
#   SOAK_SAMPLE=10           seconds between samples
#   SOAK_ENV=""              extra environment for the server ("K=V K2=V2")
#   SOAK_CONFIG_EXTRA=""     TOML appended to the server's config (e.g.
#                            '[storage]\nbackend = "redb"' , printf-expanded)
#   SOAK_OUT                 where soak.tsv and summary.txt go
#                            (default target/soak/<UTC time>)
#
# Load (the set-up of tests/bench/calls.sh, same scenarios and config): the
# callees REGISTER (calls_register.xml), a sipp UAS answers their calls
# (calls_uas.xml: 180, 200 ms, 200 OK, ACK, BYE), C x W watchers SUBSCRIBE
# Event: dialog to them (calls_watch.xml) and answer every NOTIFY; callers
# make SOAK_RATE calls/s (calls_uac.xml, 200 ms after the ACK the caller hangs
# up), spread over the callees; P presentities PUBLISH presence
# (presence_publish.xml, open/closed alternately, every SOAK_PUBLISH_MS);
# SOAK_SUB_CHURN subscriptions/s come and go (presence_subscribe.xml, Event:
# presence, with a short Expires, to the callees, whose presence changes
# only with their registrations: a subscription record and its NOTIFY
# counters written and deleted per subscription, new keys all the time; the
# NOTIFY at expiry goes unanswered, the sipp call having ended).
# Each call is ~3 dialog-state changes of the callee: W NOTIFYs each, and
# every NOTIFY's CSeq/version is written to the store, as are the call
# records, the dialog-info publications and the bindings.
#
# Samples (every SOAK_SAMPLE s, soak.tsv): elapsed s, phase (load, idle,
# restart), calls done (sipp's successful calls), server RSS, open fds
# (/proc/PID/fd), threads, the data directory's size (du, blocks on disk),
# the store's own size on disk and its live data (control API `status`:
# storage.on_disk, storage.live_bytes = key + value bytes of every record,
# storage.records), disk / live, disk bytes per call, flush ms (last, max).
# Then the idle phase, then a restart (SIGTERM, start again on the same
# data directory, wait until it answers, sample a few times).
#
# Summary (summary.txt, also printed): start, end and max of each figure;
# growth of the data directory per hour over the load; disk/live at the end
# of the load, of the idle phase and after the restart; whether the disk use
# settled: its slope over the last third of the load (MB/h) against the
# slope over the whole load.
#
# Loopback only; every sipp is bounded by -m/-timeout and timeout(1); the
# background sipps and the server are stopped by PID on exit.

# shellcheck disable=SC2086 # $pids (a PID list) is split on purpose
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../interop/lib.sh
source "$HERE/../interop/lib.sh"

# summarize TSV: start/end/max of each figure, growth per hour, disk/live,
# whether the disk use settled (also: tests/bench/soak.sh --summary TSV).
summarize() {
    awk -F'\t' '
    NR == 1 { next }
    {
        n++; t[n] = $1; ph[n] = $2
        for (i = 3; i <= 10; i++) { v[n, i] = $i; if (!(i in mx) || $i + 0 > mx[i]) mx[i] = $i + 0 }
        if ($2 == "load" || $2 == "load-end") { nl++; lt[nl] = $1; ld[nl] = $7; ll[nl] = $9 }
        if ($2 == "setup") first = n
        if ($2 == "load-end") le = n
        if ($2 == "idle-end") ie = n
    }
    function slope(a, b,   i, sx, sy, sxx, sxy, k, x, y) { # least squares, kB/s over samples a..b of the load
        k = 0; sx = sy = sxx = sxy = 0
        for (i = a; i <= b; i++) { x = lt[i]; y = ld[i]; k++; sx += x; sy += y; sxx += x * x; sxy += x * y }
        if (k < 2 || k * sxx - sx * sx == 0) return 0
        return (k * sxy - sx * sy) / (k * sxx - sx * sx)
    }
    function mb(kb) { return sprintf("%.2f", kb / 1024) }
    function ratio(kb, b) { return b > 0 ? sprintf("%.1f", kb * 1024 / b) : "n/a" }
    END {
        names[3] = "calls"; names[4] = "RSS MB"; names[5] = "fds"; names[6] = "threads"; names[7] = "data dir MB (du)"
        names[8] = "store on_disk MB"; names[9] = "live data MB"; names[10] = "records"
        printf "%-20s %12s %12s %12s %12s %12s\n", "figure", "start", "load end", "idle end", "after restart", "max"
        for (i = 3; i <= 10; i++) {
            s = v[first, i]; e = v[le, i]; d = v[ie, i]; r = v[n, i]; m = mx[i]
            if (i == 4 || i == 7) { s = mb(s); e = mb(e); d = mb(d); r = mb(r); m = mb(m) }
            if (i == 8 || i == 9) { s = mb(s / 1024); e = mb(e / 1024); d = mb(d / 1024); r = mb(r / 1024); m = mb(m / 1024) }
            printf "%-20s %12s %12s %12s %12s %12s\n", names[i], s, e, d, r, m
        }
        whole = slope(1, nl) * 3600 / 1024
        third = nl - int(nl / 3); if (third < 1) third = 1
        last = slope(third, nl) * 3600 / 1024
        first3 = slope(1, int(nl / 3) > 1 ? int(nl / 3) : 2) * 3600 / 1024
        printf "data dir growth over the load: %.1f MB/h (first third %.1f MB/h, last third %.1f MB/h)\n", whole, first3, last
        printf "disk/live: load end %s, idle end %s, after restart %s (data dir du / storage.live_bytes)\n", \
            ratio(v[le, 7], v[le, 9]), ratio(v[ie, 7], v[ie, 9]), ratio(v[n, 7], v[n, 9])
        printf "data dir bytes per call at the load end: %.0f\n", (v[le, 3] > 0 ? v[le, 7] * 1024 / v[le, 3] : 0)
        rl = (v[le, 9] > 0 ? v[le, 7] * 1024 / v[le, 9] : 0)
        # settled: over the last third of the load the data dir grows by at most a tenth
        # of the live data per hour (at most 0.1 MB/h for less than 1 MB of live data)
        lim = v[le, 9] / 1048576 / 10; if (lim < 0.1) lim = 0.1
        settled = (last <= lim) ? "yes" : "no"
        printf "settled: %s (last third slope %.2f MB/h, whole load %.1f MB/h; settled = last third <= %.2f MB/h, a tenth of the live data per hour)\n", settled, last, whole, lim
    }' "$1"
}

KEEP=0
for arg in "$@"; do
    case "$arg" in
    --keep) KEEP=1 ;;
    --summary=*) summarize "${arg#--summary=}"; exit 0 ;;
    -h | --help) bl_usage "$0"; exit 0 ;;
    *) bl_die "unknown argument: $arg (see --help)" ;;
    esac
done

DURATION="${SOAK_SECONDS:-3600}"
IDLE="${SOAK_IDLE:-120}"
RATE="${SOAK_RATE:-40}"
CALLEES="${SOAK_CALLEES:-100}"
WPC="${SOAK_WATCHERS_PER_CALLEE:-10}"
PRESENTITIES="${SOAK_PRESENTITIES:-50}"
PUBLISH_MS="${SOAK_PUBLISH_MS:-5000}"
REREG="${SOAK_REREG:-0}"
SUB_CHURN="${SOAK_SUB_CHURN:-5}"
SUB_EXPIRES="${SOAK_SUB_EXPIRES:-60}"
SAMPLE="${SOAK_SAMPLE:-10}"
RING_MS=200
HOLD_MS=200
SIPP_BUF=4194304
WATCHERS=$((CALLEES * WPC))
# Everything lives this long at most: expiries and sipp timeouts cover it.
LIFETIME=$((DURATION + IDLE + 300))
EXPIRES=$((LIFETIME > 3600 ? LIFETIME : 3600))

bl_need_tools presence python3
command -v jq >/dev/null || bl_apt_install jq

BIN="$(bl_resolve_busylamp never)" || bl_die "no busylamp binary: run cargo build --release first (or set BUSYLAMP)"
TOP="$(bl_repo_top)"
OUT="${SOAK_OUT:-$TOP/target/soak/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
TSV="$OUT/soak.tsv"
SUMMARY="$OUT/summary.txt"

bl_bench_workdir busylamp-soak # WORK; BG_PIDS: the load's background processes
DATA="$WORK/busylamp-data"
CFG="$WORK/busylamp.toml"

# ------------------------------------------------------------------ header
{
    echo "== busylamp soak — $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "machine:  nproc=$(nproc), kernel $(uname -r), $(awk '/^MemTotal/ { printf "%.1f GiB RAM", $2 / 1048576 }' /proc/meminfo), load average at start $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "busylamp: $BIN (git $(git -C "$TOP" rev-parse --short HEAD 2>/dev/null || echo none); built $(date -u -r "$BIN" +%Y-%m-%dT%H:%M:%SZ))"
    echo "load:     $RATE calls/s for ${DURATION}s, $CALLEES callees x $WPC BLF watchers, $PRESENTITIES presentities PUBLISHing every ${PUBLISH_MS} ms, $SUB_CHURN subscriptions/s coming and going (Expires $SUB_EXPIRES), re-REGISTER every ${REREG}s (0: never); idle ${IDLE}s; then a restart"
    echo "server:   env '${SOAK_ENV:-}' config extra '${SOAK_CONFIG_EXTRA:-}'"
} | tee "$SUMMARY"

# ------------------------------------------------------------------ files
awk -v n="$CALLEES" -v d="$BL_DOMAIN" 'BEGIN {
    print "SEQUENTIAL"; for (i = 1; i <= n; i++) printf "c%06d;c%06d;%s\n", i, i, d }' >"$WORK/callees.csv"
awk -v n="$CALLEES" -v w="$WPC" -v d="$BL_DOMAIN" 'BEGIN {
    print "SEQUENTIAL"
    for (i = 1; i <= n; i++) for (k = 1; k <= w; k++) printf "w%06d%03d;c%06d;%s\n", i, k, i, d }' >"$WORK/watchers.csv"
awk -v n="$CALLEES" -v d="$BL_DOMAIN" 'BEGIN {
    print "SEQUENTIAL"; for (i = 1; i <= n; i++) printf "c%06d;%s;a%06d;answer\n", i, d, i }' >"$WORK/calls.csv"
# presence_publish.xml: field2 = PUBLISHes that change the state (even)
PUBS=$((DURATION * 1000 / PUBLISH_MS / 2 * 2))
((PUBS >= 2)) || PUBS=2
awk -v n="$PRESENTITIES" -v d="$BL_DOMAIN" -v m="$PUBS" -v s="$PUBLISH_MS" 'BEGIN {
    print "SEQUENTIAL"; for (i = 1; i <= n; i++) printf "p%06d;%s;%d;%d\n", i, d, m, s }' >"$WORK/publish.csv"

awk -v d="$BL_DOMAIN" 'BEGIN {
    print "SEQUENTIAL"; for (i = 1; i <= 1000; i++) printf "x%06d;c%06d;%s\n", i, (i % 100) + 1, d }' >"$WORK/churn.csv"
sed -e "s/Expires: 3600/Expires: $SUB_EXPIRES/" "$HERE/presence_subscribe.xml" >"$WORK/churn.xml"

# The scenarios of calls.sh, made to last: subscriptions and bindings for the
# whole soak (Expires), watchers that stay through the idle phase and the
# restart (their quiet-time unsubscribe after 15 s without a NOTIFY is
# pushed past the end), and a re-REGISTER that names the UAS's port in its
# Contact (the UAS holds that port: the re-registering sipp has its own).
sed -e "s/Expires: 3600/Expires: $EXPIRES/" -e "s/timeout=\"15000\"/timeout=\"$((LIFETIME * 1000))\"/" \
    "$HERE/calls_watch.xml" >"$WORK/watch.xml"
sed -e "s/Expires: 3600/Expires: $EXPIRES/" "$HERE/calls_register.xml" >"$WORK/register.xml"
sed -e "s/Expires: 3600/Expires: $EXPIRES/" "$HERE/presence_publish.xml" >"$WORK/publish.xml"

port="$(bl_free_port)"
UAS_PORT="$(bl_free_port "$port")"
WPORT="$(bl_free_port "$port" "$UAS_PORT")"
sed -e "s/\[local_ip\]:\[local_port\];transport/[local_ip]:$UAS_PORT;transport/" "$WORK/register.xml" >"$WORK/reregister.xml"

bl_gen_busylamp_config "$CFG" "$port" "$DATA" 0 '' digest '["127.0.0.0/8"]' \
    '["calls", "register", "subscribe", "publish"]'
sed -i -e "s/^max_expires = 3600/max_expires = $EXPIRES/" -e "s/^default_expires = 3600/default_expires = $EXPIRES/" "$CFG"
{
    bl_presence_toml "sip:$BL_HOST:$port"
    echo "max_expires = $EXPIRES"
    bl_proxy_toml
    [[ -z "${SOAK_CONFIG_EXTRA:-}" ]] || printf "\n${SOAK_CONFIG_EXTRA}\n"
} >>"$CFG"

read -r -a SERVER_ENV <<<"${SOAK_ENV:-}"
start_server() {
    bl_start_busylamp "$BIN" "$CFG" "$WORK/busylamp-$1.log" "${SERVER_ENV[@]}"
    bl_wait_ready "$BL_SERVER_PID" "$port" 60 || { tail -20 "$WORK/busylamp-$1.log" >&2; bl_die "busylamp did not start ($1)"; }
}

# ------------------------------------------------------------------ sampling
T0=$SECONDS
SIPP_STATS="$WORK/calls_stats.csv"
calls_done() { # successful calls so far (sipp's -trace_stat file, every 10 s)
    [[ -s "$SIPP_STATS" ]] || { echo 0; return; }
    awk -F';' 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "SuccessfulCall(C)") c = i; next }
               c { v = $c } END { print v + 0 }' "$SIPP_STATS"
}
CALLS_FINAL=""
printf 't_s\tphase\tcalls\trss_kb\tfds\tthreads\tdir_kb\ton_disk_b\tlive_b\trecords\tdisk_per_live\tdir_b_per_call\tflush_ms_last\tflush_ms_max\n' >"$TSV"
sample() { # PHASE
    local pid="$BL_SERVER_PID" st rss fds thr dir_kb on_disk live recs fl fm calls
    rss="$(bl_rss_kb "$pid")"
    fds="$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)"
    thr="$(awk '/^Threads:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)"
    dir_kb="$(du -sk "$DATA" 2>/dev/null | cut -f1)"
    st="$(timeout 10 "$BIN" status --json --config "$CFG" 2>/dev/null || echo '{}')"
    read -r on_disk live recs fl fm < <(jq -r '.storage // {} | "\(.on_disk // 0) \(.live_bytes // 0) \(.records // 0) \(.flush_ms_last // "-") \(.flush_ms_max // "-")"' <<<"$st" 2>/dev/null || echo "0 0 0 - -")
    calls="${CALLS_FINAL:-$(calls_done)}"
    printf '%d\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t%s\t%s\n' $((SECONDS - T0)) "$1" "$calls" "${rss:-0}" "$fds" "${thr:-0}" "${dir_kb:-0}" \
        "${on_disk:-0}" "${live:-0}" "${recs:-0}" \
        "$(awk -v d="${dir_kb:-0}" -v l="${live:-0}" 'BEGIN { if (l > 0) printf "%.1f", d * 1024 / l; else print "-" }')" \
        "$(awk -v d="${dir_kb:-0}" -v c="$calls" 'BEGIN { if (c > 0) printf "%.0f", d * 1024 / c; else print "-" }')" \
        "${fl%.*}" "${fm%.*}" >>"$TSV"
    tail -1 "$TSV" | awk -F'\t' '{ printf "[sample] t=%ss %s calls=%s rss=%.1fMB fds=%s threads=%s dir=%.2fMB live=%.3fMB records=%s disk/live=%s flush=%s/%s ms\n", $1, $2, $3, $4 / 1024, $5, $6, $7 / 1024, $9 / 1048576, $10, $11, $13, $14 }' >&2
}

# ------------------------------------------------------------------ set-up
bl_log "starting busylamp on udp+tcp $BL_HOST:$port, data dir $DATA"
start_server first
SIPP_COMMON=(-buff_size "$SIPP_BUF")
bl_sipp_run register "$port" u1 "$WORK/register.xml" "$WORK/callees.csv" "$CALLEES" "$WORK" 30 \
    -p "$UAS_PORT" -r 500 -rp 1000 -l 200 -default_behaviors all,-bye "${SIPP_COMMON[@]}"
bl_sipp_clean "$CALLEES" || { bl_sipp_explain >&2; bl_die "registration failed"; }
(cd "$WORK" && exec timeout $((LIFETIME + 30)) sipp -sf "$HERE/calls_uas.xml" -i "$BL_HOST" -p "$UAS_PORT" -t u1 \
    -d "$RING_MS" -default_behaviors all,-bye "${SIPP_COMMON[@]}" -max_socket 4096 \
    -timeout "${LIFETIME}s" -nostdin -trace_err -error_file "$WORK/uas-errors.log") >"$WORK/uas.log" 2>&1 &
BG_PIDS+=("$!")
(cd "$WORK" && exec timeout $((LIFETIME + 60)) sipp "$BL_HOST:$port" -sf "$WORK/watch.xml" \
    -inf "$WORK/watchers.csv" -i "$BL_HOST" -p "$WPORT" -t u1 -m "$WATCHERS" -r 500 -rp 1000 \
    -default_behaviors all,-bye,-abortunexp "${SIPP_COMMON[@]}" -timeout "$((LIFETIME + 30))s" \
    -nostdin -trace_logs -log_file "$WORK/watch-logs.log" -trace_err -error_file "$WORK/watch-errors.log") \
    >"$WORK/watch.log" 2>&1 &
WATCH_PID=$!
BG_PIDS+=("$WATCH_PID")
deadline=$((SECONDS + 60))
while :; do
    n=$(grep -c '^established' "$WORK/watch-logs.log" 2>/dev/null || true)
    ((${n:-0} >= WATCHERS)) && break
    ((SECONDS < deadline)) && kill -0 "$WATCH_PID" 2>/dev/null || bl_die "only ${n:-0}/$WATCHERS watchers subscribed"
    sleep 0.5
done
bl_log "$WATCHERS watchers subscribed; UAS on $UAS_PORT, watchers on $WPORT"
sample setup

# ------------------------------------------------------------------ load
T_LOAD=$SECONDS
(cd "$WORK" && exec timeout $((DURATION + 90)) sipp "$BL_HOST:$port" -sf "$HERE/calls_uac.xml" \
    -inf "$WORK/calls.csv" -i "$BL_HOST" -bind_local -t u1 -m $((RATE * DURATION)) -r "$RATE" -rp 1000 \
    -l $((RATE * 10)) -d "$HOLD_MS" -default_behaviors all,-bye "${SIPP_COMMON[@]}" -max_socket 4096 \
    -timeout "$((DURATION + 60))s" -nostdin -trace_stat -stf "$SIPP_STATS" -fd 10 \
    -trace_err -error_file "$WORK/calls-errors.log") >"$WORK/calls.log" 2>&1 &
CALLS_PID=$!
BG_PIDS+=("$CALLS_PID")
(cd "$WORK" && exec timeout $((DURATION + 120)) sipp "$BL_HOST:$port" -sf "$WORK/publish.xml" \
    -inf "$WORK/publish.csv" -i "$BL_HOST" -bind_local -t u1 -m "$PRESENTITIES" -r "$PRESENTITIES" -l "$PRESENTITIES" \
    "${SIPP_COMMON[@]}" -timeout "$((DURATION + 90))s" -nostdin -trace_err -error_file "$WORK/publish-errors.log") \
    >"$WORK/publish.log" 2>&1 &
PUB_PID=$!
BG_PIDS+=("$PUB_PID")
CHURN_PID=""
if ((SUB_CHURN > 0)); then
    (cd "$WORK" && exec timeout $((DURATION + 120)) sipp "$BL_HOST:$port" -sf "$WORK/churn.xml" \
        -inf "$WORK/churn.csv" -i "$BL_HOST" -bind_local -t u1 -m $((SUB_CHURN * DURATION)) -r "$SUB_CHURN" -rp 1000 \
        -default_behaviors all,-bye "${SIPP_COMMON[@]}" -timeout "$((DURATION + 90))s" -nostdin \
        -trace_err -error_file "$WORK/churn-errors.log") >"$WORK/churn.log" 2>&1 &
    CHURN_PID=$!
    BG_PIDS+=("$CHURN_PID")
fi
bl_log "load: $RATE calls/s for ${DURATION}s (sipp $CALLS_PID), $PRESENTITIES presentities publishing (sipp $PUB_PID), $SUB_CHURN subscriptions/s (sipp ${CHURN_PID:-none})"
next_sample=$((SECONDS + SAMPLE))
next_rereg=$((SECONDS + REREG))
rereg=0
while kill -0 "$CALLS_PID" 2>/dev/null && ((SECONDS - T_LOAD < DURATION + 90)); do
    if ((REREG > 0 && SECONDS >= next_rereg && SECONDS - T_LOAD < DURATION)); then
        rereg=$((rereg + 1))
        bl_sipp_run "rereg$rereg" "$port" u1 "$WORK/reregister.xml" "$WORK/callees.csv" "$CALLEES" "$WORK" 30 \
            -r 200 -rp 1000 -l 200 -default_behaviors all,-bye "${SIPP_COMMON[@]}"
        bl_sipp_clean "$CALLEES" || bl_log "re-REGISTER $rereg not clean: $BL_SIPP_OK ok, $BL_SIPP_FAILED failed"
        next_rereg=$((next_rereg + REREG))
    fi
    if ((SECONDS >= next_sample)); then
        kill -0 "$BL_SERVER_PID" 2>/dev/null || bl_die "busylamp died during the load (see $WORK/busylamp-first.log)"
        sample load
        next_sample=$((next_sample + SAMPLE))
    fi
    sleep 1
done
wait "$CALLS_PID" 2>/dev/null || true
bl_sipp_parse "$WORK/calls.log"
CALLS_FINAL="$BL_SIPP_OK"
CALLS_FAILED="$BL_SIPP_FAILED"
CALLS_RETRANS="$BL_SIPP_RETRANS"
bl_stop_bg "$PUB_PID"
[[ -z "$CHURN_PID" ]] || bl_stop_bg "$CHURN_PID"
sample load-end

# ------------------------------------------------------------------ idle
bl_log "idle for ${IDLE}s"
t_idle=$SECONDS
next_sample=$((SECONDS + SAMPLE))
while ((SECONDS - t_idle < IDLE)); do
    if ((SECONDS >= next_sample)); then sample idle; next_sample=$((next_sample + SAMPLE)); fi
    sleep 1
done
sample idle-end

# ------------------------------------------------------------------ restart
bl_log "restart: SIGTERM, start again on the same data directory"
t_stop=$(date +%s%N)
bl_stop_server "$BL_SERVER_PID"
start_server restart
RESTART_MS=$((($(date +%s%N) - t_stop) / 1000000))
for _ in 1 2 3; do sleep "$SAMPLE"; sample restart; done
kill -0 "$BL_SERVER_PID" 2>/dev/null || bl_die "busylamp died after the restart"
SUBS_AFTER=$(timeout 10 "$BIN" status --json --config "$CFG" | jq '.counts.subscriptions.total // 0')
BINDINGS_AFTER=$(timeout 10 "$BIN" status --json --config "$CFG" | jq '.counts.bindings // 0')

# ------------------------------------------------------------------ summary
{
    echo
    echo "calls: $CALLS_FINAL ok, $CALLS_FAILED failed, $CALLS_RETRANS retransmitted requests; re-REGISTERs: $rereg; restart took ${RESTART_MS} ms (stop + start + ready), after it: $SUBS_AFTER subscriptions, $BINDINGS_AFTER bindings"
    summarize "$TSV"
    echo "samples: $TSV"
    echo "notes: sipp (callers, callee UAS, watchers, publishers) shares the $(nproc) cores with the server, and so do other"
    echo "       jobs on this machine (load average at the end $(cut -d' ' -f1-3 /proc/loadavg)); data dir on $(df -P "$WORK" | awk 'NR == 2 { print $1 }')."
} | tee -a "$SUMMARY"
