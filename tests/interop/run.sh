#!/usr/bin/env bash
# busylamp interop test: 1000 users register with digest auth (sipp,
# tests/interop/register_digest.xml) over UDP, then over TCP.
#
# Usage:
#   tests/interop/run.sh                    # against busylamp
#   tests/interop/run.sh --against-kamailio # same checks against Kamailio 5.6
# Options:
#   --build      always run `cargo build --release` first (default: only if
#                the binary is missing; never when $BUSYLAMP is set)
#   --no-build   never build
#   --keep       keep the work directory (it is always kept on failure)
# Environment (defaults):
#   BUSYLAMP           busylamp binary ($(git rev-parse --show-toplevel)/target/release/busylamp)
#   INTEROP_USERS      1000     users u0001.. with passwords pw0001..
#   INTEROP_RATE       500      sipp -r (new registrations per second)
#   INTEROP_LIMIT      200      sipp -l (registrations in flight)
#   INTEROP_TCP_MODE   tn       sipp -t for the TCP run: tn = one connection
#                               per user/call, t1 = one shared connection
#   INTEROP_TIMEOUT    120      seconds, sipp -timeout for each run
#
# Then tests/interop/presence.sh (PUBLISH/SUBSCRIBE/NOTIFY with digest, its own
# server), tests/interop/call.sh (calls through the proxy and the BLF
# NOTIFYs they cause, its own server) and tests/interop/bla.sh (two phones
# seize one appearance of a shared line: 200 then 409; its own server; the
# busylamp half only unless --against-kamailio) run with the same options and
# count as one more check each.
#
# Pass: for each transport sipp reports INTEROP_USERS successful and 0 failed
# calls (and exits 0).  Last line: "interop: N passed, M failed" (N, M =
# sipp runs).  Exit 0 only if all passed.
#
# Network: loopback only (127.0.0.1, free ports picked at run time).  The
# server is started in the background, its PID recorded, and stopped by PID
# on exit.  Packages (sip-tester, sipsak, kamailio) are apt-get installed only
# if missing.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "$HERE/lib.sh"

MODE=busylamp
BUILD=build
KEEP=0
for arg in "$@"; do
    case "$arg" in
    --against-kamailio) MODE=kamailio ;;
    --build) BUILD=force ;;
    --no-build) BUILD=never ;;
    --keep) KEEP=1 ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) bl_die "unknown argument: $arg (see --help)" ;;
    esac
done

USERS="${INTEROP_USERS:-1000}"
RATE="${INTEROP_RATE:-500}"
LIMIT="${INTEROP_LIMIT:-200}"
TCP_MODE="${INTEROP_TCP_MODE:-tn}"
SIPP_TIMEOUT="${INTEROP_TIMEOUT:-120}"

PASSED=0
FAILED=0
RESULTS=()

if [[ "$MODE" == kamailio ]]; then bl_need_tools kamailio; else bl_need_tools; fi

WORK="$(mktemp -d -t busylamp-interop.XXXXXX)"
cleanup() {
    local rc=$?
    bl_end_work "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

finish() { bl_finish "interop summary ($MODE, $USERS users)"; }

bl_log "mode: $MODE; work dir: $WORK"
bl_versions | sed 's/^/  /' >&2

PORT="$(bl_free_port)"
bl_gen_csv "$WORK/users.csv" "$USERS"
SERVER_LOG="$WORK/server.log"

case "$MODE" in
busylamp)
    if ! BIN="$(bl_resolve_busylamp "$BUILD")"; then
        echo "interop: FAIL: busylamp binary not available (set BUSYLAMP or build it)" >&2
        RESULTS+=("FAIL udp: busylamp missing" "FAIL tcp: busylamp missing")
        FAILED=2
        finish || exit 1
    fi
    bl_gen_busylamp_config "$WORK/busylamp.toml" "$PORT" "$WORK/data" "$USERS"
    bl_log "starting $BIN serve --config $WORK/busylamp.toml (udp+tcp $BL_HOST:$PORT)"
    bl_start_busylamp "$BIN" "$WORK/busylamp.toml" "$SERVER_LOG"
    ;;
kamailio)
    bl_gen_kam_dbtext "$WORK/kamdb" "$USERS"
    bl_log "starting kamailio (udp+tcp $BL_HOST:$PORT, db_text $WORK/kamdb)"
    bl_start_kamailio "$WORK" "$PORT" 2 "text://$WORK/kamdb" "$SERVER_LOG"
    ;;
esac
bl_log "server PID $BL_SERVER_PID"
SERVER_PID="$BL_SERVER_PID"

if ! bl_wait_ready "$SERVER_PID" "$PORT" 30; then
    echo "interop: FAIL: $MODE did not become ready; last lines of its log:" >&2
    tail -n 20 "$SERVER_LOG" | sed 's/^/    /' >&2
    RESULTS+=("FAIL udp: server not ready" "FAIL tcp: server not ready")
    FAILED=2
    finish || exit 1
fi
bl_log "ready"

for run in "udp u1" "tcp $TCP_MODE"; do
    read -r name transport <<<"$run"
    bl_log "sipp: $USERS REGISTERs over $name (-t $transport -r $RATE -l $LIMIT -m $USERS)"
    bl_sipp_register "$name" "$PORT" "$transport" "$WORK/users.csv" "$USERS" "$WORK" "$SIPP_TIMEOUT" \
        -r "$RATE" -rp 1000 -l "$LIMIT"
    if bl_sipp_clean "$USERS"; then
        PASSED=$((PASSED + 1))
        RESULTS+=("PASS $name (-t $transport): $BL_SIPP_OK/$USERS registered, 0 failed, $BL_SIPP_RETRANS retransmissions, ${BL_SIPP_ELAPSED}s")
    else
        FAILED=$((FAILED + 1))
        RESULTS+=("FAIL $name (-t $transport): expected $USERS successful and 0 failed; got $BL_SIPP_OK successful, $BL_SIPP_FAILED failed (sipp exit $BL_SIPP_RC)")
        echo "interop: FAIL over $name:" >&2
        bl_sipp_explain >&2
    fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "interop: $MODE (PID $SERVER_PID) died during the $name run; last lines of its log:" >&2
        tail -n 20 "$SERVER_LOG" | sed 's/^/    /' >&2
        if [[ "$name" == udp ]]; then
            FAILED=$((FAILED + 1))
            RESULTS+=("FAIL tcp: server died before it")
        fi
        break
    fi
done

if bash "$HERE/presence.sh" "$@" >&2; then PASSED=$((PASSED + 1)); RESULTS+=("PASS presence: PUBLISH/SUBSCRIBE/NOTIFY with digest (tests/interop/presence.sh)"); else FAILED=$((FAILED + 1)); RESULTS+=("FAIL presence: tests/interop/presence.sh (its output is above)"); fi
if bash "$HERE/call.sh" "$@" >&2; then PASSED=$((PASSED + 1)); RESULTS+=("PASS call: calls through the proxy (forked answer, CANCEL, 486) and their BLF NOTIFYs (tests/interop/call.sh)"); else FAILED=$((FAILED + 1)); RESULTS+=("FAIL call: tests/interop/call.sh (its output is above)"); fi
# shared lines: busylamp only here (bla.sh alone also runs Kamailio's pua_bla
# for its comparison table); --against-kamailio reaches it as given
BLA_ARGS=("$@")
[[ "$MODE" == kamailio ]] || BLA_ARGS+=(--busylamp-only)
if bash "$HERE/bla.sh" "${BLA_ARGS[@]}" >&2; then PASSED=$((PASSED + 1)); RESULTS+=("PASS bla: two Polycom-like phones seize one appearance of a shared line: 200, then 409 (tests/interop/bla.sh)"); else FAILED=$((FAILED + 1)); RESULTS+=("FAIL bla: tests/interop/bla.sh (its output is above)"); fi

finish
