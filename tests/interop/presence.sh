#!/usr/bin/env bash
# busylamp presence interop test: PUBLISH / SUBSCRIBE / NOTIFY with digest
# authentication, driven by sipp scenarios, over UDP and then over TCP.
#
# Usage:
#   tests/interop/presence.sh                    # against busylamp
#   tests/interop/presence.sh --against-kamailio # same checks against Kamailio 5.6
#                                                # (tests/bench/kamailio-presence.cfg, WITH_AUTH)
# Options:
#   --build      always run `cargo build --release` first (default: only if
#                the binary is missing; never when $BUSYLAMP is set)
#   --no-build   never build
#   --keep       keep the work directory (it is always kept on failure)
# Environment (defaults):
#   BUSYLAMP               busylamp binary ($(git rev-parse --show-toplevel)/target/release/busylamp)
#   INTEROP_TIMEOUT   60   seconds, sipp -timeout for each run
#
# Users u0001..u0010 (passwords pw0001..), realm example.test, digest MD5
# (Debian 12's sipp 3.6.1 cannot answer SHA-256 and reads only the first
# challenge: see register_digest.xml).  The checks, each one sipp run that
# must end with 1 successful and 0 failed calls, run over UDP (sipp -t u1,
# users u0001..u0005 as below) and then over TCP (sipp -t t1: one
# connection per sipp, over which the server must deliver its NOTIFYs too;
# users u0006..u0010):
#   publish   presence_publish.xml, u0001: initial PUBLISH (401 -> with
#             Authorization -> 200 + SIP-ETag + Expires), refresh with
#             SIP-If-Match (200 + new SIP-ETag), modify, remove (Expires: 0 ->
#             200), then a PUBLISH with the removed entity-tag -> 412.
#   presence  presence_watcher.xml, u0002 watches u0003: SUBSCRIBE Event:
#             presence (401 -> with Authorization -> 200) + initial NOTIFY
#             (Subscription-State active, Event presence) answered 200; then
#             presence_publish.xml publishes u0003 "open" and the watcher must
#             get a NOTIFY with Content-Type application/pidf+xml and
#             <basic>open</basic>; it unsubscribes (Expires: 0) and must get a
#             NOTIFY with Subscription-State terminated.  The publisher run of
#             this step is checked too (the same as "publish").
#   dialog    presence_dialog.xml, u0004 watches u0005: SUBSCRIBE Event:
#             dialog -> 200 + NOTIFY with Content-Type
#             application/dialog-info+xml, then unsubscribe -> terminated.
# Last line: "interop: N passed, M failed" (N, M = checks, 8 in all).  Exit 0 only if
# all passed.
#
# Network: loopback only (127.0.0.1, free ports picked at run time); every
# sipp run is bounded (-m 1, -timeout, timeout(1)); the server and the
# background watcher are stopped by PID on exit.  Packages (sip-tester,
# sipsak; kamailio, kamailio-presence-modules, kamailio-sqlite-modules,
# sqlite3 for --against-kamailio) are apt-get installed only if missing.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "$HERE/lib.sh"
# shellcheck disable=SC2034 # read by bl_start_kamailio (lib.sh)
BL_KAM_CFG="$BL_TESTS_DIR/bench/kamailio-presence.cfg"

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

USERS=10
SIPP_TIMEOUT="${INTEROP_TIMEOUT:-60}"
PASSED=0
FAILED=0
RESULTS=()

if [[ "$MODE" == kamailio ]]; then bl_need_tools kamailio sqlite presence; else bl_need_tools; fi

WORK="$(mktemp -d -t busylamp-presence-interop.XXXXXX)"
WATCH_PID=""
cleanup() {
    local rc=$?
    if [[ -n "$WATCH_PID" ]] && kill -0 "$WATCH_PID" 2>/dev/null; then
        kill -TERM "$WATCH_PID" 2>/dev/null || true
    fi
    [[ -z "$WATCH_PID" ]] || wait "$WATCH_PID" 2>/dev/null || true
    bl_end_work "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

finish() { bl_finish "presence interop summary ($MODE)"; }



bl_log "mode: $MODE; work dir: $WORK"
bl_versions | sed 's/^/  /' >&2

PORT="$(bl_free_port)"
bl_gen_csv "$WORK/users.csv" "$USERS"
# watcher CSVs: watcher;auth;domain;presentity (the users' lines + a field)
watcher_csv() { # FILE WATCHER_LINE PRESENTITY
    { echo SEQUENTIAL; sed -n "$(($2 + 1))p" "$WORK/users.csv" | sed "s/\$/;$3/"; } >"$1"
}
user_csv() { # FILE LINE
    { echo SEQUENTIAL; sed -n "$(($2 + 1))p" "$WORK/users.csv"; } >"$1"
}
SERVER_LOG="$WORK/server.log"

case "$MODE" in
busylamp)
    if ! BIN="$(bl_resolve_busylamp "$BUILD")"; then
        echo "interop: FAIL: busylamp binary not available (set BUSYLAMP or build it)" >&2
        bl_fail "busylamp binary missing"
        finish || exit 1
    fi
    bl_gen_busylamp_config "$WORK/busylamp.toml" "$PORT" "$WORK/data" "$USERS"
    bl_presence_toml >>"$WORK/busylamp.toml"
    bl_log "starting $BIN serve --config $WORK/busylamp.toml (udp+tcp $BL_HOST:$PORT)"
    bl_start_busylamp "$BIN" "$WORK/busylamp.toml" "$SERVER_LOG"
    ;;
kamailio)
    bl_gen_kam_presence_sqlite "$WORK/kam.sqlite" "$USERS"
    bl_log "starting kamailio presence with digest auth (udp+tcp $BL_HOST:$PORT, sqlite $WORK/kam.sqlite)"
    bl_start_kamailio "$WORK" "$PORT" 2 "sqlite:///$WORK/kam.sqlite" "$SERVER_LOG" \
        -A WITH_AUTH -A "SERVER_ADDRESS=\"sip:$BL_HOST:$PORT\""
    ;;
esac
bl_log "server PID $BL_SERVER_PID"
SERVER_PID="$BL_SERVER_PID"

if ! bl_wait_ready "$SERVER_PID" "$PORT" 30; then
    echo "interop: FAIL: $MODE did not become ready; last lines of its log:" >&2
    tail -n 20 "$SERVER_LOG" | sed 's/^/    /' >&2
    bl_fail "server not ready"
    finish || exit 1
fi
bl_log "ready"

# one_call TAG SCENARIO CSV AUTH_URI [sipp args...]: one bounded sipp call
# over $TRANSPORT
one_call() {
    local tag="$1" sc="$2" csv="$3" auri="$4"
    shift 4
    bl_sipp_run "$tag" "$PORT" "$TRANSPORT" "$HERE/$sc" "$csv" 1 "$WORK" "$SIPP_TIMEOUT" \
        -auth_uri "$auri" -default_behaviors all,-bye -trace_msg -message_file "$WORK/sipp-$tag-messages.log" \
        -trace_logs -log_file "$WORK/sipp-$tag-logs.log" "$@"
}
check() { # NAME DESCRIPTION: judge the last one_call
    if bl_sipp_clean 1; then
        bl_pass "$1: $2 (${BL_SIPP_ELAPSED}s)"
    else
        bl_fail "$1: $2: sipp exit $BL_SIPP_RC, $BL_SIPP_OK successful, $BL_SIPP_FAILED failed (log $BL_SIPP_LOG)"
        bl_why_failed "$BL_SIPP_LOG" >&2
    fi
}
server_alive() {
    kill -0 "$SERVER_PID" 2>/dev/null && return 0
    echo "interop: $MODE (PID $SERVER_PID) died; last lines of its log:" >&2
    tail -n 20 "$SERVER_LOG" | sed 's/^/    /' >&2
    return 1
}
user() { printf 'u%04d' "$1"; }

# run_checks NAME TRANSPORT FIRST_USER: the three checks with users
# FIRST_USER..FIRST_USER+4 over sipp -t TRANSPORT (u1: UDP, t1: one TCP
# connection per sipp, on which the server must also send its NOTIFYs or
# open one to the Contact).  Returns 1 if the server died.
run_checks() {
    local name="$1" u="$3"
    TRANSPORT="$2"
    local u1 u2 u3 u4 u5
    u1="$(user "$u")"; u2="$(user $((u + 1)))"; u3="$(user $((u + 2)))"; u4="$(user $((u + 3)))"; u5="$(user $((u + 4)))"
    user_csv "$WORK/pub-$u1.csv" "$u"
    user_csv "$WORK/pub-$u3.csv" $((u + 2))
    watcher_csv "$WORK/watch-$u2.csv" $((u + 1)) "$u3"
    watcher_csv "$WORK/dialog-$u4.csv" $((u + 3)) "$u5"

    # ---- publish: the publisher's life cycle
    bl_log "$name publish: $u1 initial/refresh/modify/remove/412 (presence_publish.xml)"
    one_call "$name-publish" presence_publish.xml "$WORK/pub-$u1.csv" "$u1@$BL_DOMAIN"
    check "$name publish" "PUBLISH 401->200+SIP-ETag, refresh, modify, remove, stale SIP-If-Match -> 412"
    server_alive || return 1

    # ---- presence: a watcher sees the published state
    bl_log "$name presence: $u2 watches $u3 (presence_watcher.xml, in the background)"
    local wtag="$name-presence-watcher"
    local wlog="$WORK/sipp-$wtag.log"
    (cd "$WORK" && exec timeout $((SIPP_TIMEOUT + 30)) sipp "$BL_HOST:$PORT" -sf "$HERE/presence_watcher.xml" \
        -inf "$WORK/watch-$u2.csv" -i "$BL_HOST" -bind_local -t "$TRANSPORT" -m 1 -auth_uri "$u3@$BL_DOMAIN" \
        -default_behaviors all,-bye -max_socket 4096 -timeout "${SIPP_TIMEOUT}s" -timeout_error -nostdin \
        -trace_err -error_file "$WORK/sipp-$wtag-errors.log" \
        -trace_msg -message_file "$WORK/sipp-$wtag-messages.log" \
        -trace_logs -log_file "$WORK/sipp-$wtag-logs.log") >"$wlog" 2>&1 &
    WATCH_PID=$!
    local deadline=$((SECONDS + 20))
    until grep -q '^established' "$WORK/sipp-$wtag-logs.log" 2>/dev/null; do
        if ((SECONDS >= deadline)) || ! kill -0 "$WATCH_PID" 2>/dev/null; then break; fi
        sleep 0.1
    done
    if grep -q '^established' "$WORK/sipp-$wtag-logs.log" 2>/dev/null; then
        bl_log "$name presence: watcher subscribed; $u3 publishes (presence_publish.xml)"
        one_call "$name-presence-publisher" presence_publish.xml "$WORK/pub-$u3.csv" "$u3@$BL_DOMAIN"
        check "$name presence-publisher" "$u3's PUBLISH life cycle while watched"
    else
        bl_log "$name presence: the watcher did not get its subscription established"
    fi
    local w_rc=0
    wait "$WATCH_PID" || w_rc=$?
    WATCH_PID=""
    BL_SIPP_RC=$w_rc
    BL_SIPP_LOG="$wlog"
    BL_SIPP_ELAPSED="-"
    bl_sipp_parse "$wlog"
    check "$name presence" "SUBSCRIBE presence 401->200, NOTIFY active, NOTIFY with PIDF <basic>open</basic>, unsubscribe -> NOTIFY terminated"
    server_alive || return 1

    # ---- dialog: Event: dialog gets dialog-info
    bl_log "$name dialog: $u4 watches $u5 (presence_dialog.xml)"
    one_call "$name-dialog" presence_dialog.xml "$WORK/dialog-$u4.csv" "$u5@$BL_DOMAIN"
    check "$name dialog" "SUBSCRIBE dialog 401->200, NOTIFY application/dialog-info+xml, unsubscribe -> NOTIFY terminated"
    server_alive || return 1
}

if run_checks udp u1 1; then
    run_checks tcp t1 6 || true
fi

finish
