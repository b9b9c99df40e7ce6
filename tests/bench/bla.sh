#!/usr/bin/env bash
# Shared-line (BLA) benchmark: how fast a seize reaches the other phones of
# the line.  busylamp, and for comparison Kamailio 5.6 (pua_bla + presence,
# tests/interop/bla-kamailio.cfg), same machine, same driver, one after the
# other.
#
# Usage: tests/bench/bla.sh [--busylamp-only|--kamailio-only] [--build|--no-build] [--keep]
#   --busylamp-only / --kamailio-only  measure one system only (default: both;
#                    Kamailio is skipped if its packages cannot be installed)
#   --build          always `cargo build --release` first; --no-build: never.
#                    Default: build only if target/release/busylamp is missing
#                    ($BUSYLAMP, if set, is used as is).
#   --keep           keep the work directory (logs, driver output)
# Environment (defaults):
#   BUSYLAMP                   busylamp binary
#   BENCH_LINES=20             shared lines (users bl001.., password pw<user>)
#   BENCH_PHONES=4             phones per line
#   BENCH_APPEARANCES=2        appearances per line (busylamp [[bla.lines]])
#   BENCH_ROUNDS=5             counted rounds (median reported) ...
#   BENCH_WARMUP=1             ... after this many rounds not counted
#   BENCH_SPACING_MS=10        ms between two seizes (or two hang-ups) of
#                              different lines within a wave
#   BENCH_WAIT_MS=2000         how long a wave waits for the NOTIFYs
#   BENCH_SERVER_CPU=0         the server runs on this core (taskset, all
#                              its threads/processes) ...
#   BENCH_DRIVER_CPU=1         ... the driver on this one
#   BENCH_TARGET_P99_MS=10     the target the result is held against
#   BENCH_BL_DATA_DIR=         where busylamp's data_dir lives (default: the
#                              work directory, on disk; /dev/shm shows what
#                              the disk costs busylamp's tail)
#   BENCH_KAM_DB_DIR=/dev/shm  where Kamailio's sqlite presentity table lives
#                              (tmpfs: no fsync per PUBLISH; "" = the work
#                              directory, on disk like busylamp's sled)
#   BENCH_KAM_RELEASE=full     how Kamailio's phones hang up: full (a full
#                              document without the dialog) or partial (the
#                              dialog terminated, as busylamp's phones and a
#                              Polycom do).  partial freezes the line on
#                              Kamailio 5.6: its presence module skips every
#                              update of a dialog publication whose stored
#                              body is terminated ("Trying to update an
#                              already terminated state"), and pua_bla keeps
#                              ONE publication per line, so after the first
#                              hang-up no seize is shown until it expires
#                              (3600 s): nothing left to measure
#
# What is measured (tests/bench/bla_seize.py, one Python process: every
# phone is its own UDP socket on loopback, as a Polycom is one contact):
# set-up: each of LINES x PHONES phones registers its line (digest MD5 on
# busylamp), answers the server's SUBSCRIBE (Event: dialog;sla) 200 and
# NOTIFYs its full state (idle), and SUBSCRIBEs Event: dialog;sla for the
# line itself.  Then rounds of PHONES waves: in wave k, phone k of every line
# seizes a free appearance (k mod APPEARANCES; a state="partial" NOTIFY with
# one dialog in state trying, the real Polycom body: version="0", x-line-id
# pval), one line every SPACING ms; for each of the other PHONES-1 phones of
# that line:
#   latency = the phone receives the first NOTIFY showing that seize (its
#             dialog in state trying) - the seizing phone sent its NOTIFY
# both taken in the driver (perf_counter): the driver's own socket and parsing
# time is included.  Then every seizing phone hangs up (dialog terminated)
# and the wave ends when the others see the appearance free (release latency,
# printed with the details).  p50/p99 per round over its LINES x PHONES x
# (PHONES-1) NOTIFYs; the median of those over the counted rounds.
# Also counted: seizes answered other than 200, NOTIFYs that never came
# (missing), NOTIFYs showing a phone its own seize (echo).
#
# Features on, per system:
#   busylamp: digest auth on REGISTER/SUBSCRIBE; appearance arbitration
#     (409 on a taken appearance); the seize's 200 and the NOTIFYs wait for
#     the appearance table and the subscriptions' state to be on disk (sled);
#     no echo (watcher = phone by its contact); full document per NOTIFY.
#   kamailio: no auth; no arbitration (pua_bla turns each NOTIFY into a
#     PUBLISH to itself through pua's outbound_proxy, the presence server
#     keeps the last body: last writer wins); presentity in sqlite, one UDP
#     worker (two workers hit "database is locked" on the presentity table),
#     that table on tmpfs (BENCH_KAM_DB_DIR);
#     the sender gets an empty document (Sender header).
#
# Loopback only; the driver is bounded (BENCH_WAIT_MS per wave, a budget in
# seconds) and run under timeout(1); the servers are stopped by PID on exit.

set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../interop/lib.sh
source "$HERE/../interop/lib.sh"
# shellcheck disable=SC2034 # read by bl_start_kamailio (lib.sh)
BL_KAM_CFG="$HERE/../interop/bla-kamailio.cfg"
DRIVER="$HERE/bla_seize.py"

bl_bench_args "$0" "$@"

LINES="${BENCH_LINES:-20}"
PHONES="${BENCH_PHONES:-4}"
APPEARANCES="${BENCH_APPEARANCES:-2}"
ROUNDS="${BENCH_ROUNDS:-5}"
WARMUP="${BENCH_WARMUP:-1}"
SPACING_MS="${BENCH_SPACING_MS:-10}"
WAIT_MS="${BENCH_WAIT_MS:-2000}"
SERVER_CPU="${BENCH_SERVER_CPU:-0}"
DRIVER_CPU="${BENCH_DRIVER_CPU:-1}"
TARGET="${BENCH_TARGET_P99_MS:-10}"
KAM_RELEASE="${BENCH_KAM_RELEASE:-full}"
KAM_DB_DIR="${BENCH_KAM_DB_DIR-/dev/shm}"
KAM_DB_TMP=""
BL_DATA_DIR="${BENCH_BL_DATA_DIR:-}"
BL_DATA_TMP=""
DRIVER_BUDGET=300
PREFIX=bl

bl_need_tools python3
KAM_NOTE=""
if ((DO_KAM)) && ! (bl_need_tools kamailio sqlite presence); then
    KAM_NOTE="skipped: Kamailio packages missing"
    DO_KAM=0
fi

bench_cleanup() { # the databases kept outside WORK (bl_bench_workdir's clean-up calls this)
    [[ -z "$KAM_DB_TMP" ]] || rm -rf "$KAM_DB_TMP"
    [[ -z "$BL_DATA_TMP" ]] || rm -rf "$BL_DATA_TMP"
}
bl_bench_workdir busylamp-bla-bench

declare -A RES=()

# pin PID and its children, every thread, to CPU
pin() {
    local p
    for p in $(bl_pids_tree "$1"); do taskset -a -cp "$2" "$p" >/dev/null 2>&1 || bl_log "taskset failed for PID $p"; done
}

# drive SYS PORT RELEASE: the driver against the server on PORT (phones hang
# up the RELEASE way: partial or full); its output in $WORK/SYS-driver.txt,
# the medians in RES
drive() {
    local sys="$1" port="$2" release="$3" out="$WORK/$1-driver.txt" rc=0
    bl_log "$sys: driver on CPU $DRIVER_CPU, server on CPU $SERVER_CPU: $LINES lines x $PHONES phones, $WARMUP+$ROUNDS rounds"
    timeout $((DRIVER_BUDGET + 180)) taskset -c "$DRIVER_CPU" python3 "$DRIVER" --server "$BL_HOST:$port" \
        --domain "$BL_DOMAIN" --lines "$LINES" --phones "$PHONES" --appearances "$APPEARANCES" \
        --rounds "$ROUNDS" --warmup "$WARMUP" --spacing-ms "$SPACING_MS" --wait-ms "$WAIT_MS" \
        --line-prefix "$PREFIX" --budget-s "$DRIVER_BUDGET" --release "$release" >"$out" 2>"$WORK/$sys-driver.err" || rc=$?
    sed 's/^/    /' "$out" >&2
    ((rc == 0)) || { bl_log "$sys: driver exit $rc: $(tail -3 "$WORK/$sys-driver.err")"; RES[$sys:status]="driver failed (exit $rc)"; }
    local p50s=() p99s=() rp99s=() ap50s=() line kv
    while read -r line; do
        [[ "$line" == ROUND* && "$line" == *warmup=0* ]] || continue
        declare -A F=()
        for kv in $line; do [[ "$kv" == *=* ]] && F[${kv%%=*}]="${kv#*=}"; done
        [[ "${F[p50_ms]}" != n/a ]] && p50s+=("${F[p50_ms]}")
        [[ "${F[p99_ms]}" != n/a ]] && p99s+=("${F[p99_ms]}")
        [[ "${F[release_p99_ms]}" != n/a ]] && rp99s+=("${F[release_p99_ms]}")
        [[ "${F[answer_p50_ms]}" != n/a ]] && ap50s+=("${F[answer_p50_ms]}")
        RES[$sys:rounds]+="${F[p50_ms]}/${F[p99_ms]} "
        unset F
    done <"$out"
    RES[$sys:p50]="$(bl_median -d 2 "${p50s[@]}")"
    RES[$sys:p99]="$(bl_median -d 2 "${p99s[@]}")"
    RES[$sys:rel_p99]="$(bl_median -d 2 "${rp99s[@]}")"
    RES[$sys:ans_p50]="$(bl_median -d 2 "${ap50s[@]}")"
    RES[$sys:total]="$(grep '^TOTAL' "$out" | sed 's/^TOTAL //' || true)"
    RES[$sys:setup]="$(grep '^SETUP' "$out" | sed 's/^SETUP //' || true)"
}

# ------------------------------------------------------------------ header
echo "== busylamp shared-line (BLA) benchmark — $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "machine:  nproc=$(nproc), kernel $(uname -r), $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
bl_versions | grep -v sipsak
BIN=""
if ((DO_BL)); then
    if BIN="$(bl_resolve_busylamp "$BUILD")"; then
        echo "busylamp: $BIN (git $(git -C "$(bl_repo_top)" rev-parse --short HEAD 2>/dev/null || echo none); built $(date -u -r "$BIN" +%Y-%m-%dT%H:%M:%SZ))"
    else
        BIN=""
        RES[busylamp:status]="missing (set BUSYLAMP or build with cargo build --release)"
    fi
fi
echo "machine load average at start: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the box shows in p99)"
echo "load:     $LINES lines x $PHONES phones, $APPEARANCES appearances; $WARMUP warm-up + $ROUNDS rounds of $PHONES waves; seizes ${SPACING_MS} ms apart; UDP; server on CPU $SERVER_CPU, driver on CPU $DRIVER_CPU"
echo

# ------------------------------------------------------------- busylamp
if [[ -n "$BIN" ]]; then
    port="$(bl_free_port)"
    BL_DATA="$WORK/busylamp-data"
    if [[ -n "$BL_DATA_DIR" ]]; then
        BL_DATA_TMP="$(mktemp -d "$BL_DATA_DIR/busylamp-bla-bench.XXXXXX")"
        BL_DATA="$BL_DATA_TMP/data"
    fi
    bl_gen_busylamp_config "$WORK/busylamp.toml" "$port" "$BL_DATA" 0
    bl_presence_toml "sip:$BL_HOST:$port" >>"$WORK/busylamp.toml"
    awk -v n="$LINES" -v p="$PREFIX" -v a="$APPEARANCES" 'BEGIN {
        for (i = 1; i <= n; i++) { u = sprintf("%s%03d", p, i); printf "\n[[users]]\nname = \"%s\"\npassword = \"pw%s\"\n", u, u }
        for (i = 1; i <= n; i++) { u = sprintf("%s%03d", p, i); printf "\n[[bla.lines]]\naor = \"%s\"\nappearances = %d\n", u, a }
    }' >>"$WORK/busylamp.toml"
    bl_log "starting busylamp ($BIN) on udp+tcp $BL_HOST:$port"
    bl_start_busylamp "$BIN" "$WORK/busylamp.toml" "$WORK/busylamp.log"
    if bl_wait_ready "$BL_SERVER_PID" "$port" 30; then
        pin "$BL_SERVER_PID" "$SERVER_CPU"
        drive busylamp "$port" partial
        kill -0 "$BL_SERVER_PID" 2>/dev/null || RES[busylamp:status]="died during the benchmark (see $WORK/busylamp.log)"
    else
        RES[busylamp:status]="did not become ready (see $WORK/busylamp.log)"
        tail -n 20 "$WORK/busylamp.log" >&2 || true
        KEEP=1
    fi
    bl_stop_server "$BL_SERVER_PID"
fi

# ------------------------------------------------------------- Kamailio
if ((DO_KAM)); then
    port="$(bl_free_port)"
    # the presentity table in memory when possible (Kamailio's other state is
    # in memory anyway): no fsync per PUBLISH, so the disk the other work on
    # the box uses does not show in Kamailio's figures
    KAM_DB="$WORK/kam.sqlite"
    if [[ -n "$KAM_DB_DIR" && -d "$KAM_DB_DIR" && -w "$KAM_DB_DIR" ]]; then
        KAM_DB_TMP="$(mktemp -d "$KAM_DB_DIR/busylamp-bla-bench.XXXXXX")"
        KAM_DB="$KAM_DB_TMP/kam.sqlite"
    fi
    bl_gen_kam_presence_sqlite "$KAM_DB" 0
    bl_log "starting kamailio (registrar + pua_bla + presence, 1 worker, presentity in $KAM_DB) on udp+tcp $BL_HOST:$port"
    bl_start_kamailio "$WORK" "$port" 1 "sqlite:///$KAM_DB" "$WORK/kamailio.log" \
        -A "SELF=\"sip:$BL_HOST:$port\"" -A "BLA_ADDRESS=\"sip:bla@$BL_HOST:$port\"" \
        -A "SERVER_ADDRESS=\"sip:$BL_HOST:$port\"" -A "LINE_RE=\"^sip:$PREFIX[0-9]+@\""
    if bl_wait_ready "$BL_SERVER_PID" "$port" 30; then
        pin "$BL_SERVER_PID" "$SERVER_CPU"
        drive kamailio "$port" "$KAM_RELEASE"
        kill -0 "$BL_SERVER_PID" 2>/dev/null || RES[kamailio:status]="died during the benchmark (see $WORK/kamailio.log)"
    else
        RES[kamailio:status]="did not become ready (see $WORK/kamailio.log)"
        tail -n 20 "$WORK/kamailio.log" >&2 || true
        KEEP=1
    fi
    bl_stop_server "$BL_SERVER_PID"
elif [[ -n "$KAM_NOTE" ]]; then
    RES[kamailio:status]="$KAM_NOTE"
fi

# --------------------------------------------------------------- report
echo
echo "== results (medians over $ROUNDS rounds of $((LINES * PHONES * (PHONES - 1))) NOTIFYs each; driver-side times, ms)"
printf '%-44s %12s %12s\n' figure busylamp kamailio
r() { printf '%-44s %12s %12s\n' "$1" "${RES[busylamp:$2]:-n/a}" "${RES[kamailio:$2]:-n/a}"; }
r "seize -> other phones' NOTIFY, p50" p50
r "seize -> other phones' NOTIFY, p99" p99
r "hang-up -> other phones' NOTIFY, p99" rel_p99
r "seize NOTIFY -> its 200, p50" ans_p50
for sys in busylamp kamailio; do
    [[ -z "${RES[$sys:status]:-}" ]] || printf '%-9s %s\n' "$sys" "${RES[$sys:status]}"
done
if [[ -n "${RES[busylamp:p99]:-}" ]]; then
    if awk -v a="${RES[busylamp:p99]}" -v t="$TARGET" 'BEGIN { exit !(a < t) }'; then
        echo "target: busylamp p99 ${RES[busylamp:p99]} ms < $TARGET ms: met"
    else
        echo "target: busylamp p99 ${RES[busylamp:p99]} ms, not under $TARGET ms: NOT met"
    fi
fi
echo
echo "details:"
for sys in busylamp kamailio; do
    [[ -n "${RES[$sys:total]:-}" ]] || continue
    echo "  $sys: set-up ${RES[$sys:setup]:-?}"
    echo "    rounds (p50/p99 ms): ${RES[$sys:rounds]:-n/a}"
    echo "    total: ${RES[$sys:total]}"
done
echo
echo "notes: one driver process plays every phone (its timestamps: sendto of the seize, receipt of the NOTIFY);"
echo "       server pinned to CPU $SERVER_CPU, driver to CPU $DRIVER_CPU (taskset); UDP on loopback;"
echo "       busylamp: digest auth, arbitration (409), appearance table and subscription state written to sled (${BL_DATA_DIR:-the work directory, $(df -P "$WORK" | awk 'NR == 2 { print $1 }')}) before"
echo "       the 200 and the NOTIFYs; kamailio: no auth, no arbitration (last writer wins), 1 worker, presentity in sqlite"
echo "       (${KAM_DB_DIR:-the work directory}),"
echo "       its phones hang up with a $KAM_RELEASE document (busylamp's: partial, the dialog terminated; see BENCH_KAM_RELEASE)."
echo "       total: missing = NOTIFYs that never showed a phone the seize; echoes = NOTIFYs showing a phone its own seize;"
echo "       unchanged = NOTIFYs showing a phone the same live dialogs as its previous one (nothing new for it);"
echo "       client_retrans = the driver's requests sent again (no answer within 500 ms)."
echo "machine load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "total time: ${SECONDS}s"
