#!/usr/bin/env bash
# busylamp shared-line (BLA) interop test: two Polycom-like sipp phones on the
# shared line "2000" seize the same appearance, against busylamp and against
# Kamailio 5.6 (pua_bla + presence), and a table of what each server answered.
#
# Usage:
#   tests/interop/bla.sh                    # busylamp, then Kamailio
#   tests/interop/bla.sh --busylamp-only
#   tests/interop/bla.sh --against-kamailio # Kamailio only (tests/interop/bla-kamailio.cfg)
# Options:
#   --build      always run `cargo build --release` first (default: only if
#                the binary is missing; never when $BUSYLAMP is set)
#   --no-build   never build
#   --keep       keep the work directory (it is always kept on failure)
# Environment (defaults):
#   BUSYLAMP               busylamp binary ($(git rev-parse --show-toplevel)/target/release/busylamp)
#   INTEROP_TIMEOUT   60   seconds, sipp -timeout for each run
#   INTEROP_KAM_DEBUG 0    Kamailio's debug level (3: every step in its log)
#
# The line: user "2000" (password pw2000), members 1001, 1002, 1003 (busylamp
# [[bla.lines]] aor = "2000", appearances = 2), domain example.test.  Each
# phone is a pair of sipp runs on one port, as a Polycom is one UA: first
# bla_register.xml registers the line from that port (digest on busylamp;
# phone A with the line's own credentials, phone B with member 1002's), then
# bla_phone.xml listens there: it answers the server's SUBSCRIBE (Event:
# dialog;sla) 200, NOTIFYs its (empty) full state, then seizes appearance 0
# (a state="partial" NOTIFY with one dialog in state trying, the real Polycom
# body shape: version="0", <param pname="x-line-id" pval="0"/>, no local
# identity), holds it 4 s and hangs up (the dialog terminated).  The watcher
# (bla_watcher.xml: phone C's subscription, From 1003, Contact user 2000)
# SUBSCRIBEs Event: dialog;sla for the line first and answers every NOTIFY
# until the line has been quiet for 6 s.
#
# Order: the watcher subscribes; phone A registers and seizes 0; as soon as
# A's seize is answered, phone B registers and seizes 0 while A still holds
# it; both hang up.  Then the table:
#   A seizes 0               busylamp 200         Kamailio 200
#   B seizes 0 (A holds it)  busylamp 409         Kamailio 200 (last writer wins)
#   what the watcher was shown: A's seize, B's seize, the line free at the end
#
# Pass (busylamp): A's seize 200, B's seize 409, A's hang-up 200; the watcher
# was shown A's trying dialog on appearance 0, never B's, and at the end no
# live dialog; B seized while A still held the appearance; every sipp run
# (2 registrations, 2 phones, the watcher) 1 successful and 0 failed.
# Kamailio's row is printed, not judged: it passes when it ran (the phones
# got subscribed and their seizes answered).
# Last line: "interop: N passed, M failed".  Exit 0 only if all passed.
#
# UDP only (sipp -t u1).  Network: loopback only (127.0.0.1, free ports
# picked at run time); every sipp run is bounded (-m 1, -timeout,
# timeout(1)); the servers and the background sipps are stopped by PID on
# exit.  Packages (sip-tester, sipsak; kamailio, kamailio-presence-modules,
# kamailio-sqlite-modules, sqlite3 for Kamailio) are apt-get installed only if
# missing; Kamailio's half is skipped if they cannot be.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "$HERE/lib.sh"
# shellcheck disable=SC2034 # read by bl_start_kamailio (lib.sh)
BL_KAM_CFG="$HERE/bla-kamailio.cfg"

DO_BL=1
DO_KAM=1
BUILD=build
KEEP=0
for arg in "$@"; do
    case "$arg" in
    --against-kamailio | --kamailio-only) DO_BL=0 ;;
    --busylamp-only) DO_KAM=0 ;;
    --build) BUILD=force ;;
    --no-build) BUILD=never ;;
    --keep) KEEP=1 ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) bl_die "unknown argument: $arg (see --help)" ;;
    esac
done

SIPP_TIMEOUT="${INTEROP_TIMEOUT:-60}"
LINE=2000
APPEARANCE=0
UA="PolycomSoundPointIP-SPIP_320-UA/3.1.2.0392"
HOLD_S=4  # bla_phone.xml: a phone holds its seize this long before it hangs up
QUIET_S=6 # bla_watcher.xml: the watcher unsubscribes after this long without NOTIFY
PASSED=0
FAILED=0
RESULTS=()

bl_need_tools
KAM_NOTE=""
if ((DO_KAM)); then
    # a subshell: bl_die in it must not end this script
    if ! (bl_need_tools kamailio sqlite presence); then
        KAM_NOTE="not run: kamailio, kamailio-presence-modules or kamailio-sqlite-modules missing"
        DO_KAM=0
    fi
fi

WORK="$(mktemp -d -t busylamp-bla-interop.XXXXXX)"
BG_PIDS=() # background sipps (the watcher, the phones' UAS halves)
cleanup() {
    local rc=$? p
    for p in "${BG_PIDS[@]}"; do bl_stop_bg "$p"; done
    bl_end_work "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bl_log "work dir: $WORK"
bl_versions | sed 's/^/  /' >&2

# credentials: the line and its members (busylamp [[users]]; Kamailio does
# not authenticate here)
cred() { printf '[authentication username=%s password=pw%s]' "$1" "$1"; }
# phone A registers with the line's credentials, phone B with member 1002's
printf 'SEQUENTIAL\n%s;%s;%s\n' "$LINE" "$(cred "$LINE")" "$BL_DOMAIN" >"$WORK/reg-A.csv"
printf 'SEQUENTIAL\n%s;%s;%s\n' "$LINE" "$(cred 1002)" "$BL_DOMAIN" >"$WORK/reg-B.csv"
printf 'SEQUENTIAL\n1003;%s;%s;%s\n' "$(cred 1003)" "$BL_DOMAIN" "$LINE" >"$WORK/watch.csv"

# results: R[sys:key]
declare -A R=()

# status line of a phone's step from its -trace_logs file: "200 OK", ...
step_status() { # LOGFILE STEP(SEIZE|RELEASE) PHONE
    grep -h -o -m1 "^$2 $3 SIP/2.0 .*" "$1" 2>/dev/null | sed "s/^$2 $3 SIP\/2.0 //" | tr -d '\r' || true
}

# notify_summary MESSAGE_FILE: one line per NOTIFY the watcher received (in
# order): "<Subscription-State> <dialog id>=<state>@<x-line-id> ..." or
# "<Subscription-State> -" for a document with no dialog
notify_summary() {
    awk '
        function flush() {
            if (innotify) {
                printf "%s%s\n", substate, (dl == "" ? " -" : dl)
            }
            innotify = 0; dl = ""; id = ""; st = ""; ln = "?"; substate = "?"
        }
        /^-+ [0-9]/ { flush(); next }
        /message received/ { recv = 1; next }
        /message sent/ { recv = 0; next }
        recv && /^NOTIFY / { innotify = 1; next }
        !innotify { next }
        tolower($0) ~ /^subscription-state:/ {
            s = $0; sub(/^[^:]*: */, "", s); sub(/;.*/, "", s); gsub(/\r/, "", s); substate = s
        }
        /<dialog[ >]/ && !/<dialog-info/ {
            id = $0; sub(/.*<dialog[^>]* id="/, "", id); sub(/".*/, "", id)
        }
        /<state[ >]/ { st = $0; sub(/.*<state[^>]*>/, "", st); sub(/<.*/, "", st) }
        /x-line-id/ { ln = $0; sub(/.*pname="x-line-id" *pval(ue)?="/, "", ln); sub(/".*/, "", ln) }
        /<\/dialog>/ { dl = dl " " id "=" st "@" ln; id = ""; st = ""; ln = "?" }
        END { flush() }
    ' "$1"
}

# wait_log FILE PATTERN PID SECONDS: until PATTERN is in FILE (0), or PID
# exited / time ran out (1)
wait_log() {
    local deadline=$((SECONDS + $4))
    until grep -q "$2" "$1" 2>/dev/null; do
        if ((SECONDS >= deadline)) || ! kill -0 "$3" 2>/dev/null; then
            grep -q "$2" "$1" 2>/dev/null && return 0
            return 1
        fi
        sleep 0.1
    done
}

# bg_sipp TAG [sipp args...]: a background sipp in $WORK; sets BGP
bg_sipp() {
    local tag="$1"
    shift
    (cd "$WORK" && exec timeout $((SIPP_TIMEOUT + 30)) sipp "$@" -i "$BL_HOST" -t u1 -m 1 \
        -max_socket 4096 -timeout "${SIPP_TIMEOUT}s" -timeout_error -nostdin \
        -trace_err -error_file "$WORK/sipp-$tag-errors.log" \
        -trace_msg -message_file "$WORK/sipp-$tag-messages.log" \
        -trace_logs -log_file "$WORK/sipp-$tag-logs.log") >"$WORK/sipp-$tag.log" 2>&1 &
    BGP=$!
    BG_PIDS+=("$BGP")
}

# bg_result TAG PID: wait for a background sipp (bounded by its timeout(1));
# sets BG_RESULT="ok failed rc" (not echoed: a $(...) subshell cannot wait
# for this shell's children)
bg_result() {
    local rc=0
    wait "$2" || rc=$?
    local keep=() q
    for q in "${BG_PIDS[@]}"; do [[ "$q" == "$2" ]] || keep+=("$q"); done
    BG_PIDS=("${keep[@]}")
    bl_sipp_parse "$WORK/sipp-$1.log"
    BG_RESULT="$BL_SIPP_OK $BL_SIPP_FAILED $rc"
}

# phone SYS PORT NAME PHONE_PORT: register the line from PHONE_PORT, then
# start the phone's UAS half there (sets PHONE_PID); 1 if the registration
# failed
phone() {
    local sys="$1" port="$2" name="$3" pport="$4" tag="$1-$3"
    bl_log "$sys: phone $name registers line $LINE from $BL_HOST:$pport"
    bl_sipp_run "$tag-register" "$port" u1 "$HERE/bla_register.xml" "$WORK/reg-$name.csv" 1 "$WORK" "$SIPP_TIMEOUT" \
        -p "$pport" -auth_uri "$BL_DOMAIN" -key ua "$UA" -default_behaviors all,-bye \
        -trace_msg -message_file "$WORK/sipp-$tag-register-messages.log"
    R[$sys:reg$name]="$BL_SIPP_OK $BL_SIPP_FAILED $BL_SIPP_RC"
    if ! bl_sipp_clean 1; then
        bl_log "$sys: phone $name did not register"
        bl_why_failed "$BL_SIPP_LOG" >&2
        return 1
    fi
    # the server's SUBSCRIBE may have left before this sipp listens: it
    # comes again (UDP retransmission, 500 ms)
    bg_sipp "$tag" -sf "$HERE/bla_phone.xml" -p "$pport" -key phone "$name" -key line "$LINE" \
        -key domain "$BL_DOMAIN" -key appearance "$APPEARANCE" -key ua "$UA" -base_cseq 1 \
        -default_behaviors all,-bye
    PHONE_PID=$BGP
}

# run_scenario SYS PORT: the whole exchange against the server on PORT
run_scenario() {
    local sys="$1" port="$2" pa pb pw wpid apid bpid
    pa="$(bl_free_port "$port")"
    pb="$(bl_free_port "$port" "$pa")"
    pw="$(bl_free_port "$port" "$pa" "$pb")"
    R[$sys:ran]=0

    bl_log "$sys: the watcher (1003) subscribes to line $LINE (Event: dialog;sla)"
    bg_sipp "$sys-watcher" "$BL_HOST:$port" -sf "$HERE/bla_watcher.xml" -inf "$WORK/watch.csv" -p "$pw" \
        -auth_uri "$LINE@$BL_DOMAIN" -key ua "$UA" -default_behaviors all,-bye
    wpid=$BGP
    if ! wait_log "$WORK/sipp-$sys-watcher-logs.log" '^established' "$wpid" 20; then
        bl_log "$sys: the watcher's subscription was not established"
        bl_why_failed "$WORK/sipp-$sys-watcher.log" >&2
    fi

    phone "$sys" "$port" A "$pa" || return 0
    apid=$PHONE_PID
    if ! wait_log "$WORK/sipp-$sys-A-logs.log" '^SEIZE A' "$apid" 20; then
        bl_log "$sys: phone A was not subscribed or its seize not answered"
        bl_why_failed "$WORK/sipp-$sys-A.log" >&2
        return 0
    fi
    R[$sys:seizeA]="$(step_status "$WORK/sipp-$sys-A-logs.log" SEIZE A)"
    bl_log "$sys: A's seize of appearance $APPEARANCE: ${R[$sys:seizeA]}"

    phone "$sys" "$port" B "$pb" || return 0
    bpid=$PHONE_PID
    if ! wait_log "$WORK/sipp-$sys-B-logs.log" '^SEIZE B' "$bpid" 20; then
        bl_log "$sys: phone B was not subscribed or its seize not answered"
        bl_why_failed "$WORK/sipp-$sys-B.log" >&2
        return 0
    fi
    R[$sys:seizeB]="$(step_status "$WORK/sipp-$sys-B-logs.log" SEIZE B)"
    bl_log "$sys: B's seize of appearance $APPEARANCE: ${R[$sys:seizeB]}"
    # B must have seized while A still held the appearance
    if grep -q '^RELEASE A' "$WORK/sipp-$sys-A-logs.log" 2>/dev/null; then
        R[$sys:timing]="late (A had hung up before B seized: the machine is too slow for HOLD_S=$HOLD_S)"
    else
        R[$sys:timing]=ok
    fi
    R[$sys:ran]=1

    bg_result "$sys-A" "$apid"
    R[$sys:phoneA]="$BG_RESULT"
    bg_result "$sys-B" "$bpid"
    R[$sys:phoneB]="$BG_RESULT"
    R[$sys:releaseA]="$(step_status "$WORK/sipp-$sys-A-logs.log" RELEASE A)"
    R[$sys:releaseB]="$(step_status "$WORK/sipp-$sys-B-logs.log" RELEASE B)"
    bl_log "$sys: phones done; the watcher unsubscribes after ${QUIET_S}s of quiet"
    bg_result "$sys-watcher" "$wpid"
    R[$sys:watcher]="$BG_RESULT"
    notify_summary "$WORK/sipp-$sys-watcher-messages.log" >"$WORK/$sys-notifies.txt"
    sed 's/^/    watcher NOTIFY: /' "$WORK/$sys-notifies.txt" >&2
}

# judge SYS: what the watcher was shown; pass/fail for busylamp
judge() {
    local sys="$1" n active sawA sawB last free=no okruns=1 k v
    [[ -f "$WORK/$sys-notifies.txt" ]] || : >"$WORK/$sys-notifies.txt"
    n=$(wc -l <"$WORK/$sys-notifies.txt")
    active="$(grep '^active' "$WORK/$sys-notifies.txt" 2>/dev/null || true)"
    sawA=no; sawB=no
    grep -q "seize-A=trying@$APPEARANCE" <<<"$active" && sawA=yes
    grep -q "seize-B=trying@$APPEARANCE" <<<"$active" && sawB=yes
    last="$(tail -n1 <<<"$active")"
    # free at the end: the last active NOTIFY shows no live dialog
    if [[ -n "$last" ]] && ! grep -qE '=(trying|proceeding|early|confirmed)@' <<<"$last"; then free=yes; fi
    R[$sys:notifies]="$n"
    # what appearance 0 looked like to the watcher, NOTIFY after NOTIFY
    # (repeats folded): "free", "A trying", "B trying", ...
    R[$sys:seq]="$(awk -v ap="$APPEARANCE" '$1 == "active" {
            s = ""
            for (i = 2; i <= NF; i++) {
                if ($i !~ ("@" ap "$") || $i ~ /=terminated@/) continue
                p = $i; sub(/=.*/, "", p); sub(/.*seize-/, "", p)
                st = $i; sub(/^[^=]*=/, "", st); sub(/@.*/, "", st)
                s = s (s == "" ? "" : "+") p " " st
            }
            if (s == "") s = "free"
            if (s != last) { out = out (out == "" ? "" : " > ") s; last = s }
        } END { print out }' "$WORK/$sys-notifies.txt" 2>/dev/null)"
    R[$sys:sawA]="$sawA"
    R[$sys:sawB]="$sawB"
    R[$sys:free]="$free"
    local runs=0 ok=0
    for k in regA regB phoneA phoneB watcher; do
        v="${R[$sys:$k]:-}"
        [[ -n "$v" ]] || { okruns=0; continue; }
        runs=$((runs + 1))
        read -r o f rc <<<"$v"
        if [[ "$o" == 1 && "$f" == 0 && "$rc" == 0 ]]; then ok=$((ok + 1)); else okruns=0; fi
    done
    R[$sys:sipp]="$ok/5 clean"
    ((runs == 5)) || R[$sys:sipp]="$ok/5 clean ($((5 - runs)) not run)"
    R[$sys:okruns]=$okruns
}

# ------------------------------------------------------------- busylamp
if ((DO_BL)); then
    if BIN="$(bl_resolve_busylamp "$BUILD")"; then
        PORT="$(bl_free_port)"
        bl_gen_busylamp_config "$WORK/busylamp.toml" "$PORT" "$WORK/data" 0
        bl_presence_toml "sip:$BL_HOST:$PORT" >>"$WORK/busylamp.toml"
        {
            for u in "$LINE" 1001 1002 1003; do printf '\n[[users]]\nname = "%s"\npassword = "pw%s"\n' "$u" "$u"; done
            cat <<EOF

[[bla.lines]]
aor = "$LINE"
label = "Main line"
appearances = 2
members = ["1001", "1002", "1003"]
EOF
        } >>"$WORK/busylamp.toml"
        bl_log "starting $BIN serve --config $WORK/busylamp.toml (udp+tcp $BL_HOST:$PORT)"
        if ! "$BIN" check-config "$WORK/busylamp.toml" >"$WORK/check-config.log" 2>&1; then
            bl_log "check-config refused the config:"; sed 's/^/    /' "$WORK/check-config.log" >&2
        fi
        bl_start_busylamp "$BIN" "$WORK/busylamp.toml" "$WORK/busylamp.log"
        if bl_wait_ready "$BL_SERVER_PID" "$PORT" 30; then
            run_scenario busylamp "$PORT"
            kill -0 "$BL_SERVER_PID" 2>/dev/null || { R[busylamp:died]=1; bl_log "busylamp died; last lines:"; tail -n 20 "$WORK/busylamp.log" >&2; }
        else
            bl_log "busylamp did not become ready; last lines of its log:"
            tail -n 20 "$WORK/busylamp.log" | sed 's/^/    /' >&2
        fi
        bl_stop_server "$BL_SERVER_PID"
        judge busylamp
    else
        bl_log "busylamp binary not available (set BUSYLAMP or build it)"
        R[busylamp:ran]=0
        R[busylamp:okruns]=0
    fi
fi

# ------------------------------------------------------------- Kamailio
if ((DO_KAM)); then
    PORT="$(bl_free_port)"
    bl_gen_kam_presence_sqlite "$WORK/kam.sqlite" 0
    bl_log "starting kamailio (registrar + pua_bla + presence) on udp+tcp $BL_HOST:$PORT"
    # one UDP worker: two workers writing the sqlite presentity table at once
    # fail with "database is locked" (db_sqlite 5.6 has no busy timeout) and
    # the PUBLISH is lost
    bl_start_kamailio "$WORK" "$PORT" 1 "sqlite:///$WORK/kam.sqlite" "$WORK/kamailio.log" \
        -A "SELF=\"sip:$BL_HOST:$PORT\"" -A "BLA_ADDRESS=\"sip:bla@$BL_HOST:$PORT\"" \
        -A "SERVER_ADDRESS=\"sip:$BL_HOST:$PORT\"" -A "LINE_RE=\"^sip:($LINE)@\"" -A "DEBUG=${INTEROP_KAM_DEBUG:-0}"
    if bl_wait_ready "$BL_SERVER_PID" "$PORT" 30; then
        run_scenario kamailio "$PORT"
        kill -0 "$BL_SERVER_PID" 2>/dev/null || { R[kamailio:died]=1; bl_log "kamailio died"; }
    else
        bl_log "kamailio did not become ready; last lines of its log:"
        tail -n 20 "$WORK/kamailio.log" | sed 's/^/    /' >&2
    fi
    bl_stop_server "$BL_SERVER_PID"
    judge kamailio
fi

# --------------------------------------------------------------- table
col() { local v="${R[$1]:-}"; echo "${v:--}"; }
echo
echo "== shared line \"$LINE\", appearance $APPEARANCE: two phones seize it (UDP, sipp $( { sipp -v 2>&1 || true; } | grep -m1 -o 'v[0-9.]*'))"
printf '%-36s %-54s %s\n' "step" "busylamp" "kamailio $(kamailio -v 2>/dev/null | head -1 | grep -o '[0-9]\.[0-9.]*' || true) (pua_bla)"
row() { printf '%-36s %-54s %s\n' "$1" "$([[ $DO_BL == 1 ]] && col "busylamp:$2" || echo 'not run')" "$([[ $DO_KAM == 1 ]] && col "kamailio:$2" || echo "${KAM_NOTE:-not run}")"; }
row "A seizes 0" seizeA
row "B seizes 0 while A holds it" seizeB
row "watcher shown A's seize" sawA
row "watcher shown B's seize" sawB
row "A hangs up" releaseA
row "B hangs up" releaseB
row "line free at the end (watcher)" free
row "appearance 0 as the watcher saw it" seq
row "NOTIFYs to the watcher" notifies
row "sipp runs (reg A, reg B, A, B, C)" sipp
row "B seized while A held" timing

# busylamp judged; Kamailio only has to have run
if ((DO_BL)); then
    why=()
    [[ "${R[busylamp:ran]:-0}" == 1 ]] || why+=("the exchange did not complete")
    [[ "${R[busylamp:seizeA]:-}" == 200* ]] || why+=("A's seize: ${R[busylamp:seizeA]:-none} (want 200)")
    [[ "${R[busylamp:seizeB]:-}" == 409* ]] || why+=("B's seize: ${R[busylamp:seizeB]:-none} (want 409)")
    [[ "${R[busylamp:releaseA]:-}" == 200* ]] || why+=("A's hang-up: ${R[busylamp:releaseA]:-none} (want 200)")
    [[ "${R[busylamp:sawA]:-}" == yes ]] || why+=("the watcher was not shown A's seize")
    [[ "${R[busylamp:sawB]:-}" == no ]] || why+=("the watcher was shown B's refused seize")
    [[ "${R[busylamp:free]:-}" == yes ]] || why+=("the watcher did not see the line free at the end")
    [[ "${R[busylamp:timing]:-}" == ok ]] || why+=("B did not seize while A held: ${R[busylamp:timing]:-}")
    [[ "${R[busylamp:okruns]:-0}" == 1 ]] || why+=("sipp runs: ${R[busylamp:sipp]:-none}")
    [[ -z "${R[busylamp:died]:-}" ]] || why+=("busylamp died")
    if ((${#why[@]} == 0)); then
        bl_pass "busylamp: A's seize 200, B's seize of the held appearance 409, the watcher shown A's seize only and the line free after the hang-up; 5 sipp runs clean"
    else
        bl_fail "busylamp: $(printf '%s; ' "${why[@]}" | sed 's/; $//')"
    fi
fi
if ((DO_KAM)); then
    if [[ "${R[kamailio:ran]:-0}" == 1 ]]; then
        bl_pass "kamailio ran (reference, not judged): A ${R[kamailio:seizeA]:-?}, B ${R[kamailio:seizeB]:-?}, watcher shown B's seize: ${R[kamailio:sawB]:-?}"
    else
        bl_fail "kamailio: the exchange did not complete (see $WORK)"
    fi
elif [[ -n "$KAM_NOTE" ]]; then
    RESULTS+=("SKIP kamailio: $KAM_NOTE")
fi

bl_finish "shared-line interop summary"
