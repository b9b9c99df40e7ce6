#!/usr/bin/env bash
# Presence benchmark: Kamailio 5.6 (presence + presence_xml +
# presence_dialoginfo + presence_mwi, tests/bench/kamailio-presence.cfg) vs
# busylamp, same machine, same sipp scenarios, one after the other.
#
# Usage: tests/bench/presence.sh [--kamailio-only|--busylamp-only] [--build|--no-build] [--keep]
#   --kamailio-only / --busylamp-only  measure one system only
#   --build          always `cargo build --release` first; --no-build: never.
#                    Default: build only if target/release/busylamp is missing
#                    ($BUSYLAMP, if set, is used as is).  If busylamp is
#                    missing or does not start, the Kamailio half still runs.
#   --keep           keep the work directory (logs, sipp output, captures)
# Environment (defaults):
#   BUSYLAMP                   busylamp binary
#   BENCH_REPEATS=3            rounds per figure (median reported)
#   BENCH_SUB_CALLS=20000      subscriptions per closed-loop run (a)
#   BENCH_SUB_CONCURRENCY=200  subscriptions in flight (sipp -users)
#   BENCH_MEM_SUBS=10000       subscriptions for the memory figure (c); 0: no (c)
#   BENCH_FANOUT_WATCHERS="100 1000"  watcher counts W for the fan-out (b); set but
#                              empty: no fan-out step
#   BENCH_STEPS="c b a"        the steps to run (any of c, b, a; order fixed):
#                              "b" alone measures the fan-out only (quicker A/B)
#   BENCH_FANOUT_PUBLISHES=100 PUBLISHes per fan-out round (even)
#   BENCH_FANOUT_SPACING_MS="100:50 1000:200"  ms between two PUBLISHes, per W
#                              ("W:ms" items; a bare number applies to every
#                              W).  busylamp coalesces changes closer than
#                              10 ms: keep it well above.  Offered NOTIFY/s =
#                              W x 1000 / ms: 2,000/s and 5,000/s by default.
#                              "1000:50" (20,000 NOTIFY/s) overloads this
#                              2-core box: the one sipp answering 1000
#                              watchers falls behind, NOTIFYs time out, and
#                              Kamailio then drops those subscriptions
#                              (timeout_rm_subs) while busylamp coalesces.
#   BENCH_KAM_CHILDREN=2       Kamailio UDP workers (register.sh found 2
#                              fastest on this 2-core VM)
#   BENCH_KAM_SHM_MB=4096      Kamailio shared memory (-m).  It keeps ~23 KB of
#                              tm state per new subscription for the wait
#                              timers (SUBSCRIBE + NOTIFY transactions), so
#                              at ~8,000 SUBSCRIBE/s 1 GB ran out (500s)
#   BENCH_BUDGET=570           seconds; steps that no longer fit are skipped
#   BENCH_SETTLE=34            seconds idle before the settled memory figure
#                              (RFC 3261 Timer J/K: transactions gone)
#
# What is measured, per system (the server is started once and keeps its
# state from one step to the next; both systems get the same sequence, in
# the order (c), (b), (a)):
#  (c) memory per subscription: VmRSS (busylamp) / PSS summed over all
#      processes and shared memory in use (kamcmd core.shmmem real_used)
#      (Kamailio) before and after BENCH_MEM_SUBS new subscriptions (distinct
#      watcher/presentity pairs, presence_subscribe.xml), divided by their
#      number: right after, and settled BENCH_SETTLE s later.
#  (a) SUBSCRIBE/s at 0 failures: closed loop (like register.sh):
#      BENCH_SUB_CONCURRENCY subscriptions in flight, each SUBSCRIBE (Event:
#      presence, Expires 3600, distinct watcher/presentity from an injection
#      CSV) -> 200 + the initial NOTIFY answered 200 (either order).
#      SUBSCRIBE/s = completed subscriptions / wall time of the sipp run; a
#      run counts only if clean (sipp exit 0, all successful, 0 failed).
#      Server CPU per subscription from /proc (all its processes).  Then an
#      open-loop check at 90 % of the median (sipp -r) must show 0 failures
#      and achieve at least 90 % of its target rate.
#      The subscriptions stay (Expires 3600): each run adds BENCH_SUB_CALLS.
#  (b) PUBLISH -> NOTIFY fan-out: W watchers subscribe to one presentity
#      (presence_watch.xml, one sipp that stays up and answers every NOTIFY),
#      then BENCH_REPEATS rounds, each one sipp call (presence_publish.xml)
#      sending an initial PUBLISH, a 1 s pause, then BENCH_FANOUT_PUBLISHES
#      modifying PUBLISHes (SIP-If-Match, basic open/closed alternately, on a
#      fixed schedule of one every BENCH_FANOUT_SPACING_MS, whatever the
#      server's PUBLISH response time), then a removing one.  What the server
#      sends and what the publisher sends it are captured on loopback
#      (tcpdump -i lo; the watchers' 200s are left out to spare the CPU) and
#      presence_fanout.py pairs each PUBLISH with, per watcher, the first
#      NOTIFY that shows its state (marker "pub-N" in the PIDF <note>):
#        latency = last such NOTIFY on the wire - PUBLISH on the wire
#                  (p50 and p99 over the round's PUBLISHes)
#        NOTIFY/s = NOTIFYs of the round / (last NOTIFY - first PUBLISH)
#      NOTIFY/s cannot exceed the offered W x 1000/spacing: it shows whether a
#      server keeps up; latency is the figure that separates them.  When a
#      server answers PUBLISH later than the spacing, the schedule slips: the
#      achieved PUBLISH interval is printed with the details.  The details also split
#      the latency (PUBLISH -> 200, -> first NOTIFY, first -> last NOTIFY)
#      and count correctness faults: NOTIFYs that reach a watcher after one
#      carrying a newer state ("out of order") and CSeq regressions within a
#      dialog (RFC 3261 §12.2.2; phones drop BLF on them).
#
# Ratios: throughput busylamp/Kamailio; latency, CPU and memory
# Kamailio/busylamp; so > 1 always means busylamp is better.
#
# Caveats printed with the results: sipp shares the 2 cores with the server;
# UDP only; no authentication (busylamp [auth] mode = "open", Kamailio
# without auth_check: digest is the interop test's business,
# tests/interop/presence.sh); Kamailio keeps subscriptions and publications
# in memory only (subs_db_mode=0, publ_cache=2), busylamp writes them to its
# database (redb by default; BENCH_STORAGE_BACKEND=sled for the other).
#
# Loopback only; every sipp run is bounded by -m, -timeout and timeout(1);
# tcpdump, the watcher sipp and the servers are stopped by PID on exit.

# shellcheck disable=SC2086 # $pids (a PID list) is split on purpose
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../interop/lib.sh
source "$HERE/../interop/lib.sh"
# shellcheck disable=SC2034 # read by bl_start_kamailio (lib.sh)
BL_KAM_CFG="$HERE/kamailio-presence.cfg"
SC_SUB="$HERE/presence_subscribe.xml"
SC_WATCH="$HERE/presence_watch.xml"
SC_PUB="$HERE/presence_publish.xml"
FANOUT_PY="$HERE/presence_fanout.py"

bl_bench_args "$0" "$@"

REPEATS="${BENCH_REPEATS:-3}"
SUB_CALLS="${BENCH_SUB_CALLS:-20000}"
SUB_CONC="${BENCH_SUB_CONCURRENCY:-200}"
MEM_SUBS="${BENCH_MEM_SUBS:-10000}"
FAN_WATCHERS="${BENCH_FANOUT_WATCHERS-100 1000}"
FAN_PUBS="${BENCH_FANOUT_PUBLISHES:-100}"
STEPS="${BENCH_STEPS:-c b a}"
FAN_SPACING="${BENCH_FANOUT_SPACING_MS:-100:50 1000:200}"
spacing_for() { # W -> ms between two PUBLISHes for W watchers
    local item def=""
    for item in $FAN_SPACING; do
        case "$item" in
        "$1":*) echo "${item#*:}"; return ;;
        *:*) ;;
        *) def="$item" ;;
        esac
    done
    echo "${def:-50}"
}
KAM_CHILDREN="${BENCH_KAM_CHILDREN:-2}"
# pinned to one core, Kamailio gets one worker (more only queue on the same core)
[[ "$BL_PIN" == 1 && -z "${BENCH_KAM_CHILDREN:-}" ]] && KAM_CHILDREN=1
KAM_SHM_MB="${BENCH_KAM_SHM_MB:-4096}"
BUDGET="${BENCH_BUDGET:-570}"
SETTLE="${BENCH_SETTLE:-34}"
RUN_TIMEOUT=60
WATCH_QUIET_S=8 # presence_watch.xml: a watcher unsubscribes after 8 s without NOTIFY
SIPP_BUF=4194304
((FAN_PUBS % 2 == 0)) || bl_die "BENCH_FANOUT_PUBLISHES must be even"

bl_need_tools kamailio sqlite presence tcpdump python3

bl_bench_workdir busylamp-presence-bench # WORK; BG_PIDS: tcpdump and background sipp

remaining() { echo $((BUDGET - SECONDS)); }
run_timeout() { # a sipp -timeout that still fits in the budget (0: none)
    local r; r=$(($(remaining) - 15))
    ((r > RUN_TIMEOUT)) && r=$RUN_TIMEOUT
    ((r < 10)) && r=0
    echo "$r"
}
kam_shm_used() { # bytes of Kamailio shared memory in use ("" if kamcmd fails)
    timeout 5 kamcmd -s "unix:$WORK/kamailio_ctl" core.shmmem 2>/dev/null | awk '/real_used:/ { print $2; exit }' || true
}

# results: RES[system:key]
declare -A RES=()
NOTES=()

# ------------------------------------------------------------------ header
HOSTINFO_CPU="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
echo "== busylamp presence benchmark — $(date -u +%Y-%m-%dT%H:%M:%SZ)"
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
echo "load:     (a) $SUB_CALLS SUBSCRIBEs/run, $SUB_CONC in flight; (b) W = $FAN_WATCHERS watchers, $FAN_PUBS PUBLISHes/round, ms apart: $FAN_SPACING; (c) $MEM_SUBS subscriptions; $REPEATS rounds; UDP, no auth"
echo

# injection files (shared by both systems)
gen_pairs() { # FILE N WATCHER_PREFIX PRESENTITY_PREFIX
    awk -v n="$2" -v w="$3" -v p="$4" -v d="$BL_DOMAIN" 'BEGIN {
        print "SEQUENTIAL"
        for (i = 1; i <= n; i++) printf "%s%06d;%s%06d;%s\n", w, i, p, i, d
    }' > "$1"
}
gen_pairs "$WORK/mem.csv" "$MEM_SUBS" m mp
gen_pairs "$WORK/subs.csv" "$SUB_CALLS" s sp

SIPP_COMMON=(-buff_size "$SIPP_BUF")

# sub_run TAG PORT CALLS [load args...]: one bounded presence_subscribe.xml
# run; sets RATE (0 if not clean), CLEAN, SKIPPED, UDP_DROPS.
sub_run() {
    local tag="$1" port="$2" calls="$3" tmo d0
    shift 3
    tmo="$(run_timeout)"
    if ((tmo == 0)); then
        bl_log "time budget exhausted: skipping $tag"
        RATE=0; CLEAN=0; SKIPPED=1; UDP_DROPS=0; return 0
    fi
    SKIPPED=0
    d0="$(bl_udp_rcvbuf_errors)"
    bl_sipp_run "$tag" "$port" u1 "$SC_SUB" "$WORK/$CSV" "$calls" "$WORK" "$tmo" \
        -default_behaviors all,-bye "${SIPP_COMMON[@]}" "$@"
    UDP_DROPS=$(($(bl_udp_rcvbuf_errors) - d0))
    if bl_sipp_clean "$calls"; then
        CLEAN=1
        RATE=$(awk -v n="$BL_SIPP_OK" -v e="$BL_SIPP_ELAPSED" 'BEGIN { printf "%.0f", n / e }')
    else
        CLEAN=0; RATE=0
        bl_log "$tag: not clean"
        bl_sipp_explain >&2
    fi
}

# mem_snapshot SYS PID -> "rss_kb pss_kb shm_bytes"
mem_snapshot() {
    local pids shm=""
    pids="$(bl_pids_tree "$2")"
    [[ "$1" == kamailio ]] && shm="$(kam_shm_used)"
    echo "$(bl_rss_kb "$2") $(bl_pss_kb $pids) ${shm:-0}"
}

# ---------------------------------------------------------------- (c) memory
measure_memory() { # SYS PORT
    local sys="$1" port="$2" pid="$BL_SERVER_PID" s0 s1 s2
    s0="$(mem_snapshot "$sys" "$pid")"
    bl_log "$sys: (c) $MEM_SUBS new subscriptions (before: rss/pss kB, shm B = $s0)"
    CSV=mem.csv sub_run "$sys-mem" "$port" "$MEM_SUBS" -users "$SUB_CONC"
    sleep 1
    s1="$(mem_snapshot "$sys" "$pid")"
    if ((!CLEAN)); then
        RES[$sys:mem]="n/a (prefill not clean: $BL_SIPP_OK/$MEM_SUBS)"
        return 0
    fi
    if ((SETTLE > 0)) && (($(remaining) > SETTLE + 120)); then
        bl_log "$sys: waiting ${SETTLE}s for transactions to drain before the settled memory figure"
        sleep "$SETTLE"
    fi
    s2="$(mem_snapshot "$sys" "$pid")"
    read -r r0 p0 h0 <<<"$s0"; read -r r1 p1 h1 <<<"$s1"; read -r r2 p2 h2 <<<"$s2"
    local per1 per2 line
    if [[ "$sys" == kamailio ]]; then
        per1=$(((p1 - p0) * 1024 / MEM_SUBS)); per2=$(((p2 - p0) * 1024 / MEM_SUBS))
        line="PSS summed over $(wc -w <<<"$(bl_pids_tree "$pid")") processes: $p0 -> $p1 kB (+$per1 B/sub), settled $p2 kB (+$per2 B/sub); shared memory real_used: +$(((h1 - h0) / MEM_SUBS)) B/sub, settled +$(((h2 - h0) / MEM_SUBS)) B/sub"
        RES[$sys:mem_live]=$(((h2 - h0) / MEM_SUBS))
    else
        per1=$(((r1 - r0) * 1024 / MEM_SUBS)); per2=$(((r2 - r0) * 1024 / MEM_SUBS))
        line="VmRSS of PID $pid: $r0 -> $r1 kB (+$per1 B/sub), settled $r2 kB (+$per2 B/sub)"
    fi
    RES[$sys:mem]="$per2"
    RES[$sys:mem_line]="$line"
    bl_log "$sys: memory: $line"
}

# ------------------------------------------------------------ (a) SUBSCRIBE/s
measure_subscribe() { # SYS PORT
    local sys="$1" port="$2" pid="$BL_SERVER_PID" pids i t0 t1 rates=() shown=() us=() clean=0 med open="n/a" drops=0 retr=0
    pids="$(bl_pids_tree "$pid")"
    for i in $(seq 1 "$REPEATS"); do
        kill -0 "$pid" 2>/dev/null || { bl_log "$sys died"; break; }
        t0="$(bl_cpu_ticks $pids)"
        CSV=subs.csv sub_run "$sys-sub$i" "$port" "$SUB_CALLS" -users "$SUB_CONC"
        t1="$(bl_cpu_ticks $pids)"
        ((SKIPPED)) && break
        drops=$((drops + UDP_DROPS)); retr=$((retr + BL_SIPP_RETRANS))
        if ((CLEAN)); then
            clean=$((clean + 1)); rates+=("$RATE"); shown+=("$RATE")
            us+=("$(awk -v t="$((t1 - t0))" -v n="$BL_SIPP_OK" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.0f", (n > 0 ? t / hz / n * 1e6 : 0) }')")
        else
            shown+=("FAIL($BL_SIPP_OK/$BL_SIPP_FAILED)")
        fi
        bl_log "$sys (a) run $i: $RATE SUBSCRIBE/s (clean=$CLEAN, $BL_SIPP_OK ok, $BL_SIPP_FAILED failed, ${BL_SIPP_ELAPSED}s, retrans $BL_SIPP_RETRANS, UDP drops $UDP_DROPS)"
    done
    med="$(bl_median "${rates[@]}")"
    med="${med%.*}"
    if [[ -n "$med" ]] && kill -0 "$pid" 2>/dev/null; then
        local target=$((med * 9 / 10)) n
        n=$((target * 3)); ((n > 3000)) || n=3000; ((n <= SUB_CALLS)) || n=$SUB_CALLS
        bl_log "$sys: open-loop check at $target SUBSCRIBE/s (90 % of median), $n subscriptions"
        CSV=subs.csv sub_run "$sys-sub-open" "$port" "$n" -r "$target" -rp 1000 -l 5000
        if ((SKIPPED)); then open="skipped"
        elif ((CLEAN && RATE * 10 >= target * 9)); then open="$target/s for $n: OK (achieved $RATE/s, retrans $BL_SIPP_RETRANS, UDP drops $UDP_DROPS)"
        elif ((CLEAN)); then open="$target/s for $n: NOT SUSTAINED: 0 failures but only $RATE/s achieved (retrans $BL_SIPP_RETRANS, UDP drops $UDP_DROPS)"
        else open="$target/s for $n: FAILED ($BL_SIPP_OK ok, $BL_SIPP_FAILED failed)"; fi
    fi
    RES[$sys:sub]="${med:-n/a}"
    RES[$sys:sub_runs]="$(IFS=' '; echo "${shown[*]:-none}") (clean $clean/$REPEATS, retrans $retr, UDP drops $drops)"
    RES[$sys:sub_us]="$(bl_median "${us[@]}")"
    RES[$sys:sub_open]="$open"
}

# --------------------------------------------------------------- (b) fan-out
# wait_quiet FILE: until FILE stops growing for 1 s (at most 20 s)
wait_quiet() {
    local last=-1 now stable=0 deadline=$((SECONDS + 20))
    while ((SECONDS < deadline)); do
        now=$(stat -c %s "$1" 2>/dev/null || echo 0)
        if [[ "$now" == "$last" ]]; then
            stable=$((stable + 1)); ((stable >= 4)) && return 0
        else
            stable=0; last=$now
        fi
        sleep 0.25
    done
}

measure_fanout() { # SYS PORT W
    local sys="$1" port="$2" w="$3" pres="fan$3" tag="$1-fan$3"
    local csv="$WORK/watch-$tag.csv" pcap="$WORK/$tag.pcap" wlog="$WORK/watch-$tag.logs" out="$WORK/$tag.txt"
    local spacing; spacing="$(spacing_for "$w")"
    local need=$(((FAN_PUBS * spacing / 1000 + 4) * REPEATS + WATCH_QUIET_S + 15))
    if (($(remaining) < need + 10)); then
        bl_log "time budget: skipping fan-out W=$w for $sys (needs ~${need}s)"
        RES[$sys:fan$w]="skipped (budget)"
        return 0
    fi
    awk -v n="$w" -v p="$pres" -v d="$BL_DOMAIN" -v t="f${w}w" 'BEGIN {
        print "SEQUENTIAL"; for (i = 1; i <= n; i++) printf "%s%06d;%s;%s\n", t, i, p, d }' > "$csv"
    printf 'SEQUENTIAL\n%s;%s;%s;%s\n' "$pres" "$BL_DOMAIN" "$FAN_PUBS" "$spacing" > "$WORK/pub-$tag.csv"

    # capture what the analysis needs and nothing else (the box has 2 cores):
    # everything the server sends (NOTIFYs) and what the publisher sends it
    local pubport; pubport="$(bl_free_port "$port")"
    "${BL_LOAD_TASKSET[@]}" tcpdump -i lo -n -s 0 -B 65536 -U -Z root -w "$pcap" \
        "udp and (src port $port or (dst port $port and src port $pubport))" 2>"$WORK/$tag.tcpdump" &
    local td=$!; BG_PIDS+=("$td")
    local deadline=$((SECONDS + 5))
    until grep -q 'listening on' "$WORK/$tag.tcpdump" 2>/dev/null; do
        if ((SECONDS >= deadline)) || ! kill -0 "$td" 2>/dev/null; then
            bl_log "tcpdump did not start: $(cat "$WORK/$tag.tcpdump")"
            RES[$sys:fan$w]="n/a (tcpdump)"; bl_stop_bg "$td"; return 0
        fi
        sleep 0.1
    done

    local wport wtmo=$((need + 20)) d0
    d0="$(bl_udp_rcvbuf_errors)"
    wport="$(bl_free_port "$port" "$pubport")"
    (cd "$WORK" && exec timeout $((wtmo + 15)) "${BL_LOAD_TASKSET[@]}" sipp "$BL_HOST:$port" -sf "$SC_WATCH" -inf "$csv" \
        -i "$BL_HOST" -p "$wport" -t u1 -m "$w" -r 1000 -rp 1000 -default_behaviors all,-bye,-abortunexp \
        -buff_size "$SIPP_BUF" -timeout "${wtmo}s" -timeout_error -nostdin \
        -trace_logs -log_file "$wlog" -trace_err -error_file "$WORK/watch-$tag-errors.log") \
        >"$WORK/sipp-watch-$tag.log" 2>&1 &
    local wpid=$!; BG_PIDS+=("$wpid")
    deadline=$((SECONDS + 30))
    local n=0
    while :; do
        n=$(grep -c '^established' "$wlog" 2>/dev/null || true)
        ((n >= w)) && break
        if ((SECONDS >= deadline)) || ! kill -0 "$wpid" 2>/dev/null; then
            bl_log "$sys: only ${n:-0}/$w watchers subscribed"; break
        fi
        sleep 0.2
    done
    bl_log "$sys: (b) $n/$w watchers subscribed to $pres; $REPEATS rounds of $FAN_PUBS PUBLISHes every ${spacing} ms"
    local r pubfail=0
    if ((n >= w)); then
        for r in $(seq 1 "$REPEATS"); do
            bl_sipp_run "$tag-pub$r" "$port" u1 "$SC_PUB" "$WORK/pub-$tag.csv" 1 "$WORK" \
                $((FAN_PUBS * spacing / 1000 + 20)) -p "$pubport" -base_cseq $((r * 1000000)) \
                -default_behaviors all,-bye "${SIPP_COMMON[@]}"
            bl_sipp_clean 1 || { pubfail=$((pubfail + 1)); bl_log "$tag round $r: publisher failed"; bl_sipp_explain >&2; }
            wait_quiet "$pcap"
        done
    fi
    # watchers unsubscribe after WATCH_QUIET_S s without NOTIFY, then sipp exits
    deadline=$((SECONDS + WATCH_QUIET_S + 15))
    while kill -0 "$wpid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.5; done
    bl_stop_bg "$wpid"
    bl_stop_bg "$td"
    local drops=$(($(bl_udp_rcvbuf_errors) - d0))
    bl_sipp_parse "$WORK/sipp-watch-$tag.log"
    local wok="$BL_SIPP_OK" wfail="$BL_SIPP_FAILED" wunexp="$BL_SIPP_UNEXPECTED"
    "${BL_LOAD_TASKSET[@]}" python3 "$FANOUT_PY" "$pcap" "$port" "$wport" >"$out" 2>&1 || bl_log "fan-out analysis failed: $(tail -3 "$out")"
    sed 's/^/    /' "$out" >&2
    local p50s=() p99s=() npss=() ivs=() acks=() firsts=() spreads=() miss=0 deliv=0 expct=0 coal=0 ooo=0 line kv
    while read -r line; do
        [[ "$line" == ROUND* ]] || continue
        declare -A F=()
        for kv in $line; do [[ "$kv" == *=* ]] && F[${kv%%=*}]="${kv#*=}"; done
        [[ "${F[p50_ms]}" != n/a ]] && p50s+=("${F[p50_ms]}")
        [[ "${F[p99_ms]}" != n/a ]] && p99s+=("${F[p99_ms]}")
        npss+=("${F[notify_per_s]}")
        ivs+=("${F[pub_interval_ms]:-0}")
        [[ "${F[publish_200_ms]:-n/a}" != n/a ]] && acks+=("${F[publish_200_ms]}")
        [[ "${F[first_notify_ms]:-n/a}" != n/a ]] && firsts+=("${F[first_notify_ms]}")
        [[ "${F[spread_ms]:-n/a}" != n/a ]] && spreads+=("${F[spread_ms]}")
        miss=$((miss + F[missing])); deliv=$((deliv + F[delivered])); expct=$((expct + F[expected]))
        coal=$((coal + ${F[coalesced]:-0})); ooo=$((ooo + ${F[out_of_order]:-0}))
        unset F
    done <"$out"
    local total; total="$(grep '^TOTAL' "$out" || true)"
    RES[$sys:fan$w:p50]="$(bl_median "${p50s[@]}")"
    RES[$sys:fan$w:p99]="$(bl_median "${p99s[@]}")"
    RES[$sys:fan$w:nps]="$(bl_median "${npss[@]}")"
    RES[$sys:fan$w:order]="$ooo/${total##*cseq_regressions=}"
    RES[$sys:fan$w:order]="${RES[$sys:fan$w:order]%% *}"
    RES[$sys:fan$w]="rounds ${#p50s[@]}/$REPEATS, PUBLISH every $(bl_median "${ivs[@]}") ms; medians: PUBLISH->200 $(bl_median "${acks[@]}") ms, PUBLISH->first NOTIFY $(bl_median "${firsts[@]}") ms, first->last NOTIFY $(bl_median "${spreads[@]}") ms; NOTIFYs $deliv/$expct (missing $miss, coalesced $coal, out of order $ooo), publisher failures $pubfail, watchers $wok ok/$wfail failed (unexpected $wunexp), ${total#TOTAL }, UDP drops $drops"
    bl_log "$sys fan-out W=$w: p50 ${RES[$sys:fan$w:p50]} ms, p99 ${RES[$sys:fan$w:p99]} ms, ${RES[$sys:fan$w:nps]} NOTIFY/s; ${RES[$sys:fan$w]}"
}

measure() { # SYS PORT
    local w
    # order: (c), (b), (a): the SUBSCRIBE storm last, so NOTIFY
    # retransmissions it may leave behind (a run that is not clean) cannot
    # load the server during the fan-out
    [[ " $STEPS " == *" c "* ]] && ((MEM_SUBS > 0)) && measure_memory "$1" "$2"
    [[ " $STEPS " == *" b "* ]] && for w in $FAN_WATCHERS; do
        kill -0 "$BL_SERVER_PID" 2>/dev/null || { bl_log "$1 died"; break; }
        measure_fanout "$1" "$2" "$w"
    done
    if [[ " $STEPS " == *" a "* ]] && kill -0 "$BL_SERVER_PID" 2>/dev/null; then measure_subscribe "$1" "$2"; fi
    return 0
}

# ------------------------------------------------------------- Kamailio
if ((DO_KAM)); then
    port="$(bl_free_port)"
    bl_gen_kam_presence_sqlite "$WORK/kam.sqlite" 0
    bl_log "starting kamailio (presence, children=$KAM_CHILDREN) on udp+tcp $BL_HOST:$port"
    bl_start_kamailio "$WORK" "$port" "$KAM_CHILDREN" "sqlite:///$WORK/kam.sqlite" "$WORK/kamailio.log" \
        -m "$KAM_SHM_MB" -A "CTL_SOCKET=\"unix:$WORK/kamailio_ctl\"" -A "SERVER_ADDRESS=\"sip:$BL_HOST:$port\""
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
    bl_gen_busylamp_config "$WORK/busylamp.toml" "$port" "$WORK/busylamp-data" 0 '' open
    bl_presence_toml >>"$WORK/busylamp.toml" # [presence] keys: tests/interop/lib.sh
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
row() { # LABEL KEY DIRECTION(up: busylamp/kamailio, down: kamailio/busylamp)
    local k="${RES[kamailio:$2]:-n/a}" b="${RES[busylamp:$2]:-n/a}" r
    if [[ "$3" == up ]]; then r="$(ratio "$b" "$k")"; else r="$(ratio "$k" "$b")"; fi
    if [[ "$3" == none ]]; then r="-"; else num "$k" || k="n/a"; num "$b" || b="n/a"; fi
    printf '%-46s %12s %12s %8s\n' "$1" "$k" "$b" "$r"
}
echo
echo "== results (medians over $REPEATS rounds; ratio > 1 means busylamp is better:"
echo "   throughput busylamp/kamailio, latency/CPU/memory kamailio/busylamp)"
printf '%-46s %12s %12s %8s\n' figure kamailio busylamp ratio
row "(a) SUBSCRIBE/s, closed loop, 0 failures" sub up
row "(a) server CPU us per SUBSCRIBE" sub_us down
for w in $FAN_WATCHERS; do
    row "(b) W=$w: NOTIFY/s (offered $((w * 1000 / $(spacing_for "$w")))/s)" "fan$w:nps" up
    row "(b) W=$w: PUBLISH->last NOTIFY p50 ms" "fan$w:p50" down
    row "(b) W=$w: PUBLISH->last NOTIFY p99 ms" "fan$w:p99" down
    row "(b) W=$w: NOTIFYs out of order/CSeq regressions" "fan$w:order" none
done
row "(c) resident memory per subscription, B" mem down
row "(c) live memory per subscription, B" mem_live down
[[ -z "$BL_STATUS" ]] || printf '%-9s %s\n' busylamp "$BL_STATUS"
echo
echo "details:"
for sys in kamailio busylamp; do
    [[ -n "${RES[$sys:sub]:-}${RES[$sys:mem]:-}" ]] || continue
    echo "  $sys:"
    echo "    (a) runs (SUBSCRIBE/s): ${RES[$sys:sub_runs]:-n/a}"
    echo "    (a) open-loop check at 90 % of the median: ${RES[$sys:sub_open]:-n/a}"
    for w in $FAN_WATCHERS; do echo "    (b) W=$w: ${RES[$sys:fan$w]:-n/a}"; done
    echo "    (c) ${RES[$sys:mem_line]:-${RES[$sys:mem]:-n/a}}"
done
for n in "${NOTES[@]}"; do echo "  note: $n"; done
echo
echo "notes: sipp shares the $(nproc) cores with the server; UDP only; no authentication;"
echo "       kamailio: children=$KAM_CHILDREN, shm ${KAM_SHM_MB} MB, subscriptions and publications in memory only (subs_db_mode=0, publ_cache=2);"
echo "       busylamp: writes subscriptions/publications to ${BENCH_STORAGE_BACKEND:-redb} (data_dir on $(df -P "$WORK" | awk 'NR == 2 { print $1 }'));"
echo "       (b) latency = last watcher's NOTIFY on the wire - PUBLISH on the wire (loopback capture), per PUBLISH;"
echo "       UDP drops = kernel RcvbufErrors over the step, system-wide (other processes on the machine count too);"
echo "       memory (c) = growth / $MEM_SUBS after ${SETTLE}s idle. Resident: kamailio PSS over all its processes,"
echo "       busylamp VmRSS (both keep pages the transactions touched: a high-water mark). Live: kamailio shared"
echo "       memory in use (kamcmd core.shmmem real_used; busylamp has no such counter here: n/a)."
echo "total time: ${SECONDS}s"
