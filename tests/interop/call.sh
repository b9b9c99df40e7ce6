#!/usr/bin/env bash
# busylamp call interop test: calls through the proxy between sipp phones,
# and what a busy-lamp-field watcher of the callee is told about them.
#
# Usage:
#   tests/interop/call.sh                    # against busylamp
#   tests/interop/call.sh --against-kamailio # same checks against Kamailio 5.6
#                                            # (tests/bench/kamailio-calls.cfg)
# Options:
#   --build      always run `cargo build --release` first (default: only if
#                the binary is missing; never when $BUSYLAMP is set)
#   --no-build   never build
#   --keep       keep the work directory (it is always kept on failure)
# Environment (defaults):
#   BUSYLAMP               busylamp binary ($(git rev-parse --show-toplevel)/target/release/busylamp)
#   INTEROP_TIMEOUT   60   seconds, sipp -timeout for each run
#   INTEROP_BARESIP   auto the optional baresip check (see below)
#
# Authentication: none for the sipp phones.  busylamp runs with [auth] trusted =
# ["127.0.0.1/32"] and trusted_for naming all four purposes (calls, register,
# subscribe, publish: requests from 127.0.0.1 are never challenged; busylamp
# logs a warning for each of the last three) and Kamailio without
# auth_check.  The baresip phones run on 127.0.0.2, outside auth.trusted: they
# are challenged with busylamp's default algorithms (one MD5 challenge).  Digest
# for REGISTER, SUBSCRIBE and PUBLISH is proven by run.sh and presence.sh;
# this test is about routing calls and the lamps they light.
#
# The callee "bob" registers two contacts (calls_register.xml, twice): one
# from sipp UAS A (tests/bench/calls_uas.xml: rings 1 s, then answers) and
# one from sipp UAS B (Contact user "bob-ring": it only rings, until
# CANCELled).  The watcher "carol" subscribes to bob's dialog state
# (call_watcher.xml, Event: dialog) and stays subscribed through three calls
# from "alice" (sipp UAC, each Call-ID with its own prefix via -cid_str):
#   answer  calls_uac.xml: INVITE forked to A and B -> 180s -> A's 200 (the
#           proxy CANCELs B: 487) -> ACK -> 1 s -> BYE -> 200
#   cancel  call_uac_cancel.xml: INVITE -> 180s -> CANCEL -> 200 + 487 -> ACK
#           (the proxy CANCELs both branches)
#   busy    call_uac_busy.xml: INVITE -> 486 from both contacts -> ACK
# The watcher checks every NOTIFY (sipp <ereg check_it / check_it_inverse>
# on the dialog-info body): answer early -> confirmed -> terminated, cancel
# early -> terminated (never confirmed), busy never early or confirmed
# (terminated, or no lamp at all: the phone never rang), an ended call never
# back to early/confirmed, and the dialog-info version exactly +1 on every
# NOTIFY.  Then it unsubscribes.
# Checks (each one sipp run that must end with its calls successful, 0
# failed, exit 0): register A, register B, the three calls, UAS A (3 calls),
# UAS B (3 calls), the watcher: 8 in all.
#
# baresip (optional, INTEROP_BARESIP: auto = when installed, 1 = apt-get
# install baresip-core if missing, 0 = skip): two headless baresip 1.0
# softphones on 127.0.0.2 (no UI module, stdin /dev/null, SIP trace, each
# ended by its own -t and by timeout(1)), answering busylamp's default digest
# challenge (baresip 1.0 gives up on a SHA-256 one): "dave" registers and
# PUBLISHes his presence (open), then "erin" registers, SUBSCRIBEs to dave's
# presence (Event: presence) and must get a NOTIFY with <basic>open</basic>,
# and calls dave (INVITE, 407, INVITE with credentials), who answers
# (answermode=auto) with 200.  One more check.
# Last line: "interop: N passed, M failed".  Exit 0 only if all passed.
#
# --against-kamailio: the watcher check fails now and then, for a Kamailio
# bug the check is there to catch: when both phones' 180s reach
# pua_dialoginfo at once, pua sends two initial PUBLISHes for the one call
# (the second before the first's 200 gave it an ETag), the presence server
# keeps both, and after the call ends one of them still says early until
# it expires (DLG_LIFETIME, 300 s): the lamp stays "ringing" and a_term
# times out.  Its log shows the two early <dialog>s with the same id.
#
# UDP only (sipp -t u1).  Network: loopback only (127.0.0.1, free ports
# picked at run time); every sipp run is bounded (-m, -timeout, timeout(1));
# the server and the background sipps are stopped by PID on exit.  Packages
# (sip-tester, sipsak; kamailio, kamailio-presence-modules,
# kamailio-sqlite-modules, sqlite3 for --against-kamailio) are apt-get
# installed only if missing.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "$HERE/lib.sh"
# shellcheck disable=SC2034 # read by bl_start_kamailio (lib.sh)
BL_KAM_CFG="$BL_TESTS_DIR/bench/kamailio-calls.cfg"
BENCH="$BL_TESTS_DIR/bench"

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

SIPP_TIMEOUT="${INTEROP_TIMEOUT:-60}"
RING_MS=1000 # UAS A rings this long before it answers
HOLD_MS=1000 # the answered call lasts this long
CALLEE=bob
CALLER=alice
WATCHER=carol
PASSED=0
FAILED=0
RESULTS=()

if [[ "$MODE" == kamailio ]]; then bl_need_tools kamailio sqlite presence; else bl_need_tools; fi

WORK="$(mktemp -d -t busylamp-call-interop.XXXXXX)"
BG_PIDS=() # background sipps (UAS A, UAS B, watcher)
cleanup() {
    local rc=$? p
    for p in "${BG_PIDS[@]}"; do bl_stop_bg "$p"; done
    bl_end_work "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

finish() { bl_finish "call interop summary ($MODE)"; }



bl_log "mode: $MODE; work dir: $WORK"
bl_versions | sed 's/^/  /' >&2

PORT="$(bl_free_port)"
SERVER_LOG="$WORK/server.log"
case "$MODE" in
busylamp)
    if ! BIN="$(bl_resolve_busylamp "$BUILD")"; then
        echo "interop: FAIL: busylamp binary not available (set BUSYLAMP or build it)" >&2
        bl_fail "busylamp binary missing"
        finish || exit 1
    fi
    bl_gen_busylamp_config "$WORK/busylamp.toml" "$PORT" "$WORK/data" 0 '' digest '["127.0.0.1/32"]' \
        '["calls", "register", "subscribe", "publish"]'
    bl_presence_toml "sip:$BL_HOST:$PORT" >>"$WORK/busylamp.toml"
    bl_proxy_toml >>"$WORK/busylamp.toml"
    # the baresip phones (127.0.0.2, not trusted) register, publish, subscribe and call
    # with digest
    printf '\n[[users]]\nname = "%s"\npassword = "pw%s"\n' dave dave erin erin >>"$WORK/busylamp.toml"
    bl_log "starting $BIN serve --config $WORK/busylamp.toml (udp+tcp $BL_HOST:$PORT)"
    bl_start_busylamp "$BIN" "$WORK/busylamp.toml" "$SERVER_LOG"
    ;;
kamailio)
    bl_gen_kam_presence_sqlite "$WORK/kam.sqlite" 0
    bl_log "starting kamailio registrar + proxy + pua_dialoginfo + presence (udp+tcp $BL_HOST:$PORT)"
    bl_start_kamailio "$WORK" "$PORT" 2 "sqlite:///$WORK/kam.sqlite" "$SERVER_LOG" \
        -A "OUTBOUND_PROXY=\"sip:$BL_HOST:$PORT\"" -A "SERVER_ADDRESS=\"sip:$BL_HOST:$PORT\""
    ;;
esac
SERVER_PID="$BL_SERVER_PID"
bl_log "server PID $SERVER_PID"

if ! bl_wait_ready "$SERVER_PID" "$PORT" 30; then
    echo "interop: FAIL: $MODE did not become ready; last lines of its log:" >&2
    tail -n 20 "$SERVER_LOG" | sed 's/^/    /' >&2
    bl_fail "server not ready"
    finish || exit 1
fi
bl_log "ready"

server_alive() {
    kill -0 "$SERVER_PID" 2>/dev/null && return 0
    echo "interop: $MODE (PID $SERVER_PID) died; last lines of its log:" >&2
    tail -n 20 "$SERVER_LOG" | sed 's/^/    /' >&2
    bl_fail "$MODE died"
    finish || exit 1
}
check() { # NAME DESCRIPTION CALLS: judge the last sipp run
    if bl_sipp_clean "$3"; then
        bl_pass "$1: $2 (${BL_SIPP_ELAPSED}s)"
    else
        bl_fail "$1: $2: sipp exit $BL_SIPP_RC, $BL_SIPP_OK successful, $BL_SIPP_FAILED failed, $BL_SIPP_UNEXPECTED unexpected (log $BL_SIPP_LOG)"
        bl_why_failed "$BL_SIPP_LOG" >&2
    fi
}
# one_run TAG SCENARIO CSV CALLS [sipp args...]: a bounded sipp UAC run
one_run() {
    local tag="$1" sc="$2" csv="$3" calls="$4"
    shift 4
    bl_sipp_run "$tag" "$PORT" u1 "$sc" "$csv" "$calls" "$WORK" "$SIPP_TIMEOUT" \
        -default_behaviors all,-bye -trace_msg -message_file "$WORK/sipp-$tag-messages.log" \
        -trace_logs -log_file "$WORK/sipp-$tag-logs.log" "$@"
}
# bg_sipp TAG PORT_OR_EMPTY [sipp args...]: a bounded sipp in the
# background (its own log files like bl_sipp_run's); sets BG_PID
bg_sipp() {
    local tag="$1"
    shift
    (cd "$WORK" && exec timeout $((SIPP_TIMEOUT + 30)) sipp "$@" -i "$BL_HOST" -t u1 \
        -max_socket 4096 -timeout "${SIPP_TIMEOUT}s" -timeout_error -nostdin \
        -trace_err -error_file "$WORK/sipp-$tag-errors.log" \
        -trace_msg -message_file "$WORK/sipp-$tag-messages.log" \
        -trace_logs -log_file "$WORK/sipp-$tag-logs.log") >"$WORK/sipp-$tag.log" 2>&1 &
    BG_PID=$!
    BG_PIDS+=("$BG_PID")
}
# bg_wait TAG PID CALLS NAME DESCRIPTION: wait (bounded by its timeout) for a
# background sipp and judge it
bg_wait() {
    local tag="$1" pid="$2" rc=0
    wait "$pid" || rc=$?
    BL_SIPP_RC=$rc
    BL_SIPP_LOG="$WORK/sipp-$tag.log"
    BL_SIPP_ELAPSED="-"
    bl_sipp_parse "$BL_SIPP_LOG"
    # sipp's screen does not count the unexpected messages it continued
    # after (-abortunexp off); its error file names each one
    BL_SIPP_UNEXPECTED=$(grep -c 'on unexpected message' "$WORK/sipp-$tag-errors.log" 2>/dev/null || true)
    check "$4" "$5, ${BL_SIPP_UNEXPECTED:-0} unexpected" "$3"
}

PA="$(bl_free_port "$PORT")"
PB="$(bl_free_port "$PORT" "$PA")"
printf 'SEQUENTIAL\n%s;%s;%s\n' "$CALLEE" "$CALLEE" "$BL_DOMAIN" >"$WORK/reg-a.csv"
printf 'SEQUENTIAL\n%s;%s-ring;%s\n' "$CALLEE" "$CALLEE" "$BL_DOMAIN" >"$WORK/reg-b.csv"
printf 'SEQUENTIAL\n%s;%s;%s\n' "$WATCHER" "$CALLEE" "$BL_DOMAIN" >"$WORK/watch.csv"
for c in answer cancel busy; do
    printf 'SEQUENTIAL\n%s;%s;%s;%s\n' "$CALLEE" "$BL_DOMAIN" "$CALLER" "$c" >"$WORK/call-$c.csv"
done

# ---- the callee's two phones register
bl_log "register: $CALLEE from port $PA (contact $CALLEE) and from port $PB (contact $CALLEE-ring)"
one_run register-a "$BENCH/calls_register.xml" "$WORK/reg-a.csv" 1 -p "$PA"
check "register A" "REGISTER $CALLEE, Contact sip:$CALLEE@$BL_HOST:$PA -> 200" 1
one_run register-b "$BENCH/calls_register.xml" "$WORK/reg-b.csv" 1 -p "$PB"
check "register B" "REGISTER $CALLEE, second Contact sip:$CALLEE-ring@$BL_HOST:$PB -> 200" 1
server_alive

# ---- the two phones (UAS), three calls each
bg_sipp uas-a -sf "$BENCH/calls_uas.xml" -p "$PA" -m 3 -d "$RING_MS" -default_behaviors all,-bye
UAS_A=$BG_PID
bg_sipp uas-b -sf "$BENCH/calls_uas.xml" -p "$PB" -m 3 -default_behaviors all,-bye
UAS_B=$BG_PID

# ---- the watcher
PW="$(bl_free_port "$PORT" "$PA" "$PB")"
bl_log "watcher: $WATCHER subscribes to $CALLEE's dialog state (call_watcher.xml)"
# -abortunexp off: a NOTIFY that comes while sipp is still sending its 200
# for the previous one is ignored by sipp and answered when the server
# retransmits it (Kamailio sends the NOTIFYs of two branches' 180s back to
# back; busylamp sends one NOTIFY per subscription at a time); the count is
# printed with the result
bg_sipp watcher "$BL_HOST:$PORT" -sf "$HERE/call_watcher.xml" -inf "$WORK/watch.csv" -p "$PW" -m 1 \
    -default_behaviors all,-bye,-abortunexp
WATCH=$BG_PID
deadline=$((SECONDS + 20))
until grep -q '^established' "$WORK/sipp-watcher-logs.log" 2>/dev/null; do
    if ((SECONDS >= deadline)) || ! kill -0 "$WATCH" 2>/dev/null; then break; fi
    sleep 0.1
done
if ! grep -q '^established' "$WORK/sipp-watcher-logs.log" 2>/dev/null; then
    bl_log "the watcher's subscription was not established; the calls run anyway"
fi

# ---- three calls
bl_log "call 1 (answer): $CALLER -> $CALLEE, forked to both phones, A answers after ${RING_MS} ms, BYE after ${HOLD_MS} ms"
one_run call-answer "$BENCH/calls_uac.xml" "$WORK/call-answer.csv" 1 -d "$HOLD_MS" -cid_str 'blcall-answer-%u-%p@%s'
check "answer" "INVITE forked -> 180 -> 200 -> ACK -> BYE -> 200" 1
server_alive
bl_log "call 2 (cancel): $CALLER -> $CALLEE, CANCEL while both ring"
one_run call-cancel "$HERE/call_uac_cancel.xml" "$WORK/call-cancel.csv" 1 -cid_str 'blcall-cancel-%u-%p@%s'
check "cancel" "INVITE forked -> 180 -> CANCEL -> 200 + 487 -> ACK" 1
server_alive
bl_log "call 3 (busy): $CALLER -> $CALLEE, both phones answer 486"
one_run call-busy "$HERE/call_uac_busy.xml" "$WORK/call-busy.csv" 1 -cid_str 'blcall-busy-%u-%p@%s'
check "busy" "INVITE forked -> 486 -> ACK" 1
server_alive

# ---- judge the background sipps (each ends by itself: -m, or its timeout)
bl_log "waiting for the watcher and the two phones to finish"
bg_wait watcher "$WATCH" 1 "watcher" "NOTIFYs: answer early->confirmed->terminated, cancel early->terminated, busy never early/confirmed, versions +1, unsubscribe -> terminated"
bg_wait uas-a "$UAS_A" 3 "UAS A" "answered, was CANCELled, sent 486"
bg_wait uas-b "$UAS_B" 3 "UAS B" "rang until CANCELled twice, sent 486"
BG_PIDS=()
server_alive

# ---- baresip (optional): a real softphone registers and sees a colleague's presence
# baresip_run TAG ACCOUNT_USER PUBINT SECONDS [CONTACT_USER]: one headless
# baresip (no UI module, stdin /dev/null, SIP trace on), ended by its own -t
# and bounded by timeout(1), in the background; sets BG_PID
baresip_run() {
    local tag="$1" user="$2" pubint="$3" secs="$4" contact="${5:-}" dir="$WORK/baresip-$1" bport
    shift 5 || shift $#
    # baresip also binds the next port (TLS): keep each phone's pair apart
    bport="$(bl_free_port "$PORT" "$PA" "$PB" "$PW" "${BARESIP_PORTS[@]}")"
    BARESIP_PORTS+=("$bport" $((bport + 1)) $((bport - 1)))
    mkdir -p "$dir"
    cat >"$dir/config" <<EOF
poll_method epoll
sip_listen $BARESIP_HOST:$bport
module_path /usr/lib/baresip/modules
module g711.so
module_app account.so
module_app contact.so
module_app menu.so
module_app presence.so
audio_player nothing
audio_source nothing
EOF
    printf '<sip:%s@%s;transport=udp>;auth_pass=pw%s;outbound="sip:%s:%s";regint=600;pubint=%s;answermode=auto\n' \
        "$user" "$BL_DOMAIN" "$user" "$BL_HOST" "$PORT" "$pubint" >"$dir/accounts"
    if [[ -n "$contact" ]]; then
        printf '"%s" <sip:%s@%s>;presence=p2p\n' "$contact" "$contact" "$BL_DOMAIN" >"$dir/contacts"
    else
        : >"$dir/contacts"
    fi
    (cd "$dir" && exec timeout $((secs + 10)) baresip -f "$dir" -t "$secs" -s "$@" </dev/null) >"$WORK/baresip-$tag.log" 2>&1 &
    BG_PID=$!
    BG_PIDS+=("$BG_PID")
}
# baresip_seen LOG START_LINE CSEQ_METHOD [BODY_REGEX]: did the SIP trace show
# a message whose first line starts with START_LINE, with that CSeq method
# (and a line matching BODY_REGEX)?  (awk reads to the end: an early exit
# would kill tr with SIGPIPE and bl_fail the pipeline under pipefail)
baresip_seen() {
    tr -d '\r' <"$1" | awk -v start="$2" -v method="$3" -v body="${4:-}" '
        /^UDP .* -> / { first = ""; cs = 0; bd = (body == ""); n = 0; next }
        { n++ }
        n == 1 { first = $0 }
        /^CSeq: [0-9]+ / && $3 == method { cs = 1 }
        body != "" && $0 ~ body { bd = 1 }
        index(first, start) == 1 && cs && bd { ok = 1 }
        END { exit !ok }'
}
BARESIP="${INTEROP_BARESIP:-auto}"
BARESIP_HOST=127.0.0.2 # outside [auth] trusted: challenged like any phone
BARESIP_PORTS=()
if [[ "$BARESIP" == 1 ]] && ! command -v baresip >/dev/null; then bl_apt_install baresip-core; fi
if [[ "$BARESIP" != 0 ]] && command -v baresip >/dev/null; then
    bl_log "baresip: dave registers and publishes 'open'; erin registers, subscribes to dave's presence and calls him"
    baresip_run dave dave 600 12
    DAVE=$BG_PID
    deadline=$((SECONDS + 8))
    until grep -q "dave@$BL_DOMAIN: {0/UDP/v4} 200 OK" "$WORK/baresip-dave.log" 2>/dev/null; do
        if ((SECONDS >= deadline)) || ! kill -0 "$DAVE" 2>/dev/null; then break; fi
        sleep 0.2
    done
    sleep 1 # dave's PUBLISH
    baresip_run erin erin 0 6 dave -e "/dial dave@$BL_DOMAIN"
    ERIN=$BG_PID
    wait "$ERIN" || true
    wait "$DAVE" || true
    BG_PIDS=()
    why=()
    grep -q "dave@$BL_DOMAIN: {0/UDP/v4} 200 OK" "$WORK/baresip-dave.log" || why+=("dave not registered")
    baresip_seen "$WORK/baresip-dave.log" "SIP/2.0 200" PUBLISH || why+=("dave's PUBLISH not answered 200")
    grep -q "erin@$BL_DOMAIN: {0/UDP/v4} 200 OK" "$WORK/baresip-erin.log" || why+=("erin not registered")
    baresip_seen "$WORK/baresip-erin.log" "SIP/2.0 200" SUBSCRIBE || why+=("erin's SUBSCRIBE not answered 200")
    baresip_seen "$WORK/baresip-erin.log" "NOTIFY " NOTIFY '<basic>open</basic>' || why+=("erin got no NOTIFY with dave's <basic>open</basic>")
    baresip_seen "$WORK/baresip-dave.log" "INVITE sip:dave" INVITE || why+=("erin's call did not reach dave")
    baresip_seen "$WORK/baresip-erin.log" "SIP/2.0 200" INVITE || why+=("erin's call was not answered 200")
    if ((${#why[@]} == 0)); then
        bl_pass "baresip: $(baresip -h 2>&1 | head -1 | cut -d' ' -f1,2) with digest (default challenge) registers and PUBLISHes open, a second one registers, SUBSCRIBEs, gets NOTIFY <basic>open</basic> and calls the first, who answers 200"
    else
        bl_fail "baresip: $(IFS=';'; echo "${why[*]}") (logs $WORK/baresip-*.log)"
    fi
    server_alive
else
    RESULTS+=("SKIP baresip: $([[ "$BARESIP" == 0 ]] && echo 'INTEROP_BARESIP=0' || echo 'not installed (INTEROP_BARESIP=1 installs Debian baresip-core)')")
fi

finish
