# shellcheck shell=bash
# Shared helpers for tests/interop/run.sh and tests/bench/register.sh.
# Source it; it defines functions and BL_* variables only.
#
# Everything here talks to loopback only (127.0.0.1), every load run is
# bounded in count (-m) and time (-timeout + timeout(1)), and every process
# started here is stopped by PID (bl_stop_server), never by name.

BL_LIB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BL_TESTS_DIR="$(dirname "$BL_LIB_DIR")"
BL_SCENARIO="$BL_LIB_DIR/register_digest.xml"
BL_KAM_CFG="$BL_TESTS_DIR/bench/kamailio-register.cfg"
BL_DOMAIN="${BL_DOMAIN:-example.test}"
BL_HOST=127.0.0.1
BL_SERVER_PIDS=()
BL_SERVER_PID=""

# Capacity per core (BENCH_PIN=1): the server under test (busylamp, or Kamailio with all its
# processes) runs on core BENCH_SERVER_CPU and every load generator, capture and analysis on
# core BENCH_LOAD_CPU, so that a closed loop saturates the server's core and not the box.
# Both prefixes are empty otherwise.
BL_PIN="${BENCH_PIN:-0}"
BL_SERVER_CPU="${BENCH_SERVER_CPU:-1}"
BL_LOAD_CPU="${BENCH_LOAD_CPU:-0}"
BL_SERVER_TASKSET=()
BL_LOAD_TASKSET=()
if [[ "$BL_PIN" == 1 ]]; then
    BL_SERVER_TASKSET=(taskset -c "$BL_SERVER_CPU")
    BL_LOAD_TASKSET=(taskset -c "$BL_LOAD_CPU")
fi

# bl_pin_note: one line for a report header saying where things ran.
bl_pin_note() {
    if [[ "$BL_PIN" == 1 ]]; then
        echo "pinned:   server on core $BL_SERVER_CPU (every thread/process), load generators on core $BL_LOAD_CPU (taskset): figures are capacity per core"
    else
        echo "pinned:   no (server and load generators share the $(nproc) cores; BENCH_PIN=1 pins them apart)"
    fi
}

bl_log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
bl_die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

bl_repo_top() {
    git -C "$BL_LIB_DIR" rev-parse --show-toplevel 2>/dev/null \
        || (cd "$BL_TESTS_DIR/.." && pwd)
}

# ---------------------------------------------------------------- packages
# bl_apt_install PKG...: apt-get update once, then install (no-op if none).
bl_apt_install() {
    (($#)) || return 0
    local sudo=()
    if [[ "$(id -u)" -ne 0 ]]; then
        command -v sudo >/dev/null || bl_die "need root (or sudo) to install: $*"
        sudo=(sudo)
    fi
    bl_log "installing missing packages: $*"
    "${sudo[@]}" apt-get update -qq >&2 \
        || bl_die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "$@" >&2 \
        || bl_die "apt-get install $* failed"
}

# bl_need_tools [kamailio] [sqlite] [presence] [tcpdump] [python3]: install
# only what is absent (presence: kamailio-presence-modules).
bl_need_tools() {
    local want missing=()
    command -v sipp >/dev/null || missing+=(sip-tester)
    command -v sipsak >/dev/null || missing+=(sipsak)
    for want in "$@"; do
        case "$want" in
        kamailio) command -v kamailio >/dev/null || missing+=(kamailio) ;;
        sqlite)
            dpkg -s kamailio-sqlite-modules >/dev/null 2>&1 || missing+=(kamailio-sqlite-modules)
            command -v sqlite3 >/dev/null || missing+=(sqlite3)
            ;;
        presence)
            dpkg -s kamailio-presence-modules >/dev/null 2>&1 || missing+=(kamailio-presence-modules)
            ;;
        tcpdump) command -v tcpdump >/dev/null || missing+=(tcpdump) ;;
        python3) command -v python3 >/dev/null || missing+=(python3) ;;
        esac
    done
    bl_apt_install "${missing[@]}"
}

bl_versions() {
    printf 'sipp:     %s (deb %s)\n' "$({ sipp -v 2>&1 || true; } | grep -m1 -o 'SIPp v[^ ]*' | sed 's/\.$//')" \
        "$(dpkg-query -W -f='${Version}' sip-tester 2>/dev/null || echo '?')"
    printf 'sipsak:   %s\n' "$(sipsak -V 2>&1 | head -1)"
    if command -v kamailio >/dev/null; then
        printf 'kamailio: %s (deb %s)\n' "$(kamailio -v 2>&1 | head -1 | sed 's/^version: //')" \
            "$(dpkg-query -W -f='${Version}' kamailio 2>/dev/null || echo '?')"
    fi
}

# ------------------------------------------------------------------- ports
# bl_free_port [EXCLUDED...]: a port with no TCP or UDP socket (v4 or v6)
# bound to it, from /proc/net (no ss/netstat needed).
bl_free_port() {
    local used p
    used=" $(awk 'FNR > 1 { split($2, a, ":"); print a[2] }' \
        /proc/net/tcp /proc/net/udp /proc/net/tcp6 /proc/net/udp6 2>/dev/null | sort -u | tr '\n' ' ') "
    for _ in $(seq 1 500); do
        p=$((20000 + RANDOM % 40000))
        [[ " $* " == *" $p "* ]] && continue
        [[ "$used" == *" $(printf '%04X' "$p") "* ]] && continue
        echo "$p"
        return 0
    done
    bl_die "no free loopback port found"
}

# ------------------------------------------------------------------- users
bl_user_width() { local w=${#1}; ((w < 4)) && w=4; echo "$w"; }

# bl_gen_csv FILE N: sipp injection file (see register_digest.xml).
bl_gen_csv() {
    local w; w=$(bl_user_width "$2")
    awk -v n="$2" -v w="$w" -v d="$BL_DOMAIN" 'BEGIN {
        print "SEQUENTIAL"
        for (i = 1; i <= n; i++) {
            u = sprintf("u%0*d", w, i); p = sprintf("pw%0*d", w, i)
            printf "%s;[authentication username=%s password=%s];%s\n", u, u, p, d
        }
    }' > "$1"
}

# bl_gen_busylamp_config FILE PORT DATA_DIR N [ALGORITHMS_TOML] [AUTH_MODE] [TRUSTED_TOML] [TRUSTED_FOR_TOML]
# ALGORITHMS_TOML: [auth] algorithms, default "" = busylamp's default (one
# MD5 challenge, what Debian 12's sipp 3.6.1 and baresip 1.0 can answer).
# AUTH_MODE: digest (default) or open (nobody is challenged; N may be 0).
# TRUSTED_TOML: [auth] trusted, default [] (e.g. '["127.0.0.0/8"]').
# TRUSTED_FOR_TOML: [auth] trusted_for, default '["calls"]' (busylamp's
# default: a trusted source's REGISTER/SUBSCRIBE/PUBLISH are challenged).
# tests/bench/calls.sh passes '["127.0.0.0/8"]' and tests/interop/call.sh
# '["127.0.0.1/32"]' (its baresip phones on 127.0.0.2 are challenged) and
# all four purposes: those phones are then never challenged (busylamp
# logs a warning per purpose, as it should).
# Callers append further sections (e.g. [presence]) to FILE themselves.
bl_gen_busylamp_config() {
    local file="$1" port="$2" data="$3" n="$4" algs="${5:-}" mode="${6:-digest}" trusted="${7:-[]}" trusted_for="${8:-[\"calls\"]}" w
    w=$(bl_user_width "$n")
    # BENCH_STORAGE_BACKEND: the storage backend under test (default: the server's own)
    local storage=""
    if [[ -n "${BENCH_STORAGE_BACKEND:-}" ]]; then
        storage=$'\n[storage]\nbackend = "'"$BENCH_STORAGE_BACKEND"$'"\n'
    fi
    {
        cat <<EOF
# generated by tests/interop/lib.sh
[server]
domain = "$BL_DOMAIN"
listen = ["udp:$BL_HOST:$port", "tcp:$BL_HOST:$port"]
data_dir = "$data"
# every load generator here is one host (127.0.0.1): sipp -t tn opens a
# connection per user, which the per-source limit (default 16) is there to stop
max_tcp_connections_per_source = 10000
# and sends REGISTER/SUBSCRIBE storms, which the per-source rate limit (default
# 50/s, burst 500) is there to stop: off (Kamailio has none either)
rate_limit_per_source = 0

[registrar]
min_expires = 60
max_expires = 3600
default_expires = 3600
max_contacts = 10
$storage
[auth]
mode = "$mode"
${algs:+algorithms = $algs}
trusted = $trusted
trusted_for = $trusted_for
EOF
        awk -v n="$n" -v w="$w" 'BEGIN {
            for (i = 1; i <= n; i++)
                printf "\n[[users]]\nname = \"u%0*d\"\npassword = \"pw%0*d\"\n", w, i, w, i
        }'
    } > "$file"
}

# bl_presence_toml [SERVER_ADDRESS]: busylamp's [presence] section, appended
# by tests/bench/presence.sh, tests/bench/calls.sh, tests/interop/presence.sh
# and tests/interop/call.sh to the config bl_gen_busylamp_config writes.
# SERVER_ADDRESS (e.g. "sip:127.0.0.1:5070") becomes server_address (our
# Contact in subscription dialogs).  The ONLY place these scripts name
# [presence] keys: adjust here when the schema changes.
# shellcheck disable=SC2120 # SERVER_ADDRESS is optional
bl_presence_toml() {
    # like tests/bench/kamailio-presence.cfg: every watcher in our domain is
    # authorized at once (Kamailio: presence_xml force_active=1); room for the
    # benchmark's ~100,000 subscriptions; other keys at their defaults
    # (coalesce_ms = 10, min_expires = 60, max_expires = 3600)
    cat <<'EOF'

[presence]
same_domain = "allow"
max_subscriptions = 500000
EOF
    [[ -z "${1:-}" ]] || printf 'server_address = "%s"\n' "$1"
}

# bl_proxy_toml: busylamp's [proxy] section for the call tests
# (tests/bench/calls.sh, tests/interop/call.sh): phones call each other, no
# upstream PBX.  The ONLY place these scripts name [proxy] keys.
bl_proxy_toml() {
    cat <<'EOF'

[proxy]
upstream = ""
EOF
}

# bl_gen_kam_dbtext DIR N: db_text "subscriber" + "version" tables.
bl_gen_kam_dbtext() {
    local dir="$1" n="$2" w
    w=$(bl_user_width "$n")
    mkdir -p "$dir"
    printf 'id(int,auto) table_name(string) table_version(int) \n0:subscriber:7\n' > "$dir/version"
    awk -v n="$n" -v w="$w" -v d="$BL_DOMAIN" 'BEGIN {
        print "id(int,auto) username(string) domain(string) password(string) "
        for (i = 1; i <= n; i++) printf "%d:u%0*d:%s:pw%0*d\n", i, w, i, d, w, i
    }' > "$dir/subscriber"
}

# bl_gen_kam_sqlite FILE N: sqlite db with kamailio's subscriber schema
# (UNIQUE (username, domain) index: lookups are O(log n), unlike db_text's
# linear scan, which dominates Kamailio's cost at 10,000 users).
bl_gen_kam_sqlite() {
    local file="$1" n="$2" w
    w=$(bl_user_width "$n")
    rm -f "$file"
    {
        cat <<'EOF'
CREATE TABLE version (
    id INTEGER PRIMARY KEY NOT NULL,
    table_name VARCHAR(32) NOT NULL,
    table_version INTEGER DEFAULT 0 NOT NULL,
    CONSTRAINT version_table_name_idx UNIQUE (table_name));
INSERT INTO version (table_name, table_version) VALUES ('version', '1');
CREATE TABLE subscriber (
    id INTEGER PRIMARY KEY NOT NULL,
    username VARCHAR(64) DEFAULT '' NOT NULL,
    domain VARCHAR(64) DEFAULT '' NOT NULL,
    password VARCHAR(64) DEFAULT '' NOT NULL,
    ha1 VARCHAR(128) DEFAULT '' NOT NULL,
    ha1b VARCHAR(128) DEFAULT '' NOT NULL,
    CONSTRAINT subscriber_account_idx UNIQUE (username, domain));
CREATE INDEX subscriber_username_idx ON subscriber (username);
INSERT INTO version (table_name, table_version) VALUES ('subscriber', '7');
BEGIN;
EOF
        awk -v n="$n" -v w="$w" -v d="$BL_DOMAIN" 'BEGIN {
            for (i = 1; i <= n; i++)
                printf "INSERT INTO subscriber (username, domain, password) VALUES (\x27u%0*d\x27, \x27%s\x27, \x27pw%0*d\x27);\n", w, i, d, w, i
        }'
        echo "COMMIT;"
    } | sqlite3 "$file"
}

# bl_gen_kam_presence_sqlite FILE N: bl_gen_kam_sqlite plus kamailio's
# presence tables (presentity, active_watchers, watchers, xcap, pua), for
# tests/bench/kamailio-presence.cfg.
bl_gen_kam_presence_sqlite() {
    local schema=/usr/share/kamailio/db_sqlite/presence-create.sql
    [[ -r "$schema" ]] || bl_die "$schema missing (Debian package kamailio-sqlite-modules)"
    bl_gen_kam_sqlite "$1" "$2"
    sqlite3 "$1" < "$schema"
}

# ----------------------------------------------------------------- servers
# bl_resolve_busylamp MODE: prints the binary path. MODE: build (cargo build
# --release at the repo top if the binary is missing), force (always build),
# never. $BUSYLAMP, if set, wins and is never built. Returns 1 if unusable.
bl_resolve_busylamp() {
    local mode="${1:-build}" top bin
    if [[ -n "${BUSYLAMP:-}" ]]; then
        [[ -x "$BUSYLAMP" ]] || { bl_log "BUSYLAMP=$BUSYLAMP is not an executable"; return 1; }
        echo "$BUSYLAMP"
        return 0
    fi
    top="$(bl_repo_top)"
    bin="$top/target/release/busylamp"
    if [[ "$mode" == force || ( "$mode" == build && ! -x "$bin" ) ]]; then
        if command -v cargo >/dev/null && [[ -f "$top/Cargo.toml" ]]; then
            bl_log "building busylamp: (cd $top && cargo build --release)"
            (cd "$top" && cargo build --release >&2) || bl_log "cargo build --release failed"
        else
            bl_log "cargo or $top/Cargo.toml missing: cannot build busylamp"
        fi
    fi
    [[ -x "$bin" ]] || { bl_log "busylamp binary missing: $bin"; return 1; }
    echo "$bin"
}

# bl_start_busylamp BIN CONFIG LOG [ENV=VAL...]: sets BL_SERVER_PID.
bl_start_busylamp() {
    local bin="$1" cfg="$2" log="$3"
    shift 3
    "${BL_SERVER_TASKSET[@]}" env "$@" "$bin" serve --config "$cfg" >"$log" 2>&1 &
    BL_SERVER_PID=$!
    BL_SERVER_PIDS+=("$BL_SERVER_PID")
    bl_perf_attach "$BL_SERVER_PID" busylamp
}

# Profiling (BENCH_PERF=DIR): bl_perf_attach PIDS NAME samples the whole machine with `perf
# record -a` (self time, no call graphs, BENCH_PERF_HZ=499 per second and core) into
# DIR/NAME-PID.data, with the server's PIDS (comma-separated) in DIR/NAME-PID.pids: `perf -p`
# would miss the threads a server starts later, so the report filters by process instead
# (tests/bench/perf_summary.py groups the samples: allocator, kernel network, syscalls,
# parsing, storage, ...). bl_stop_server ends the recording after the server.
declare -A BL_PERF_OF=()
bl_perf_attach() {
    local pids="$1" name="$2" first="${1%%,*}"
    [[ -n "${BENCH_PERF:-}" ]] || return 0
    command -v perf >/dev/null || { bl_log "BENCH_PERF set but perf is not installed (apt-get install linux-perf)"; return 0; }
    mkdir -p "$BENCH_PERF"
    echo "$pids" >"$BENCH_PERF/$name-$first.pids"
    "${BL_LOAD_TASKSET[@]}" perf record -q -a -F "${BENCH_PERF_HZ:-499}" ${BENCH_PERF_GRAPH:+-g} \
        -o "$BENCH_PERF/$name-$first.data" >"$BENCH_PERF/$name-$first.log" 2>&1 &
    BL_PERF_OF[$first]=$!
    bl_log "perf: sampling the machine for $name (PIDs $pids) into $BENCH_PERF/$name-$first.data"
}

# bl_perf_detach PID: ends the recording bl_perf_attach started for server PID.
bl_perf_detach() {
    local perf="${BL_PERF_OF[$1]:-}"
    [[ -n "$perf" ]] || return 0
    kill -INT "$perf" 2>/dev/null || true
    wait "$perf" 2>/dev/null || true
    unset "BL_PERF_OF[$1]"
}

# bl_start_kamailio WORKDIR PORT CHILDREN DBURL LOG [kamailio args...]:
# foreground kamailio (-DD, logs to stderr), UDP and TCP on 127.0.0.1:PORT.
# Sets BL_SERVER_PID (the main process; SIGTERM to it stops its children).
bl_start_kamailio() {
    local work="$1" port="$2" children="$3" dburl="$4" log="$5"
    shift 5
    mkdir -p "$work/run"
    "${BL_SERVER_TASKSET[@]}" kamailio -DD -E -f "$BL_KAM_CFG" -Y "$work/run" -w "$work" -m 256 -M 16 \
        -l "udp:$BL_HOST:$port" -l "tcp:$BL_HOST:$port" \
        -A "DBURL=\"$dburl\"" -A "REALM=\"$BL_DOMAIN\"" \
        -A "CHILDREN=$children" -A "TCP_CHILDREN=$children" "$@" >"$log" 2>&1 &
    BL_SERVER_PID=$!
    BL_SERVER_PIDS+=("$BL_SERVER_PID")
    # its workers are forked a moment later: sample the main process's whole tree then
    if [[ -n "${BENCH_PERF:-}" ]]; then
        sleep 2
        local pids; pids="$(bl_pids_tree "$BL_SERVER_PID")"
        bl_perf_attach "${pids// /,}" kamailio
    fi
}

# bl_pids_tree PID: PID and its direct children (kamailio's workers).
bl_pids_tree() {
    local kids
    kids="$(pgrep -P "$1" 2>/dev/null || true)"
    # shellcheck disable=SC2086 # split the PID list on purpose
    echo "$1" $kids
}

# bl_stop_server PID: SIGTERM, wait up to 10 s, then SIGKILL it and any of
# its (snapshotted) children still alive.  Only these PIDs are signalled.
bl_stop_server() {
    local pid="$1" kids k
    [[ -n "$pid" ]] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kids="$(pgrep -P "$pid" 2>/dev/null || true)"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            bl_log "PID $pid ignored SIGTERM for 10 s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        for k in $kids; do
            if kill -0 "$k" 2>/dev/null; then kill -KILL "$k" 2>/dev/null || true; fi
        done
    fi
    wait "$pid" 2>/dev/null || true
    bl_perf_detach "$pid"
    local keep=() p
    for p in "${BL_SERVER_PIDS[@]}"; do [[ "$p" == "$pid" ]] || keep+=("$p"); done
    BL_SERVER_PIDS=("${keep[@]}")
}

bl_stop_all_servers() {
    local p
    for p in "${BL_SERVER_PIDS[@]}"; do bl_stop_server "$p"; done
}

# bl_wait_ready PID PORT [TIMEOUT_S=30]: OPTIONS via sipsak until any final
# response (exit 0: 200, exit 1: another final response), then check that
# TCP accepts.  Fails early if PID dies.  Bounded by TIMEOUT_S.
bl_wait_ready() {
    local pid="$1" port="$2" limit="${3:-30}" deadline rc
    deadline=$((SECONDS + limit))
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            bl_log "server (PID $pid) exited before it became ready"
            return 1
        fi
        rc=0
        timeout 3 sipsak -H "$BL_HOST" -s "sip:ping@$BL_HOST:$port" >/dev/null 2>&1 || rc=$?
        if ((rc == 0 || rc == 1)); then break; fi
        if ((SECONDS >= deadline)); then
            bl_log "server (PID $pid) not ready on udp:$BL_HOST:$port after ${limit}s (last sipsak exit $rc)"
            return 1
        fi
        sleep 0.2
    done
    while ! timeout 2 bash -c "exec 3<>/dev/tcp/$BL_HOST/$port" 2>/dev/null; do
        if ((SECONDS >= deadline)) || ! kill -0 "$pid" 2>/dev/null; then
            bl_log "server (PID $pid) answers on UDP but not on tcp:$BL_HOST:$port"
            return 1
        fi
        sleep 0.2
    done
    return 0
}

# ------------------------------------------------------------- measurement
# CPU ticks (utime+stime, all threads) summed over PIDs.
# bl_ctx_switches PID...: context switches (voluntary + involuntary) of every live thread of
# the PIDs. Each is a thread going to sleep or being preempted: per operation, how often the
# server hands work between its threads (threads that exited meanwhile are not counted).
bl_ctx_switches() {
    local p
    for p in "$@"; do cat /proc/"$p"/task/*/status 2>/dev/null; done |
        awk '/^(voluntary|nonvoluntary)_ctxt_switches:/ { t += $2 } END { print t + 0 }'
}

bl_cpu_ticks() {
    local t=0 p f
    for p in "$@"; do
        if [[ -r "/proc/$p/stat" ]]; then
            # fields after the ")" of comm: utime is the 12th, stime the 13th
            read -r -a f < <(sed 's/^.*) //' "/proc/$p/stat")
            t=$((t + f[11] + f[12]))
        fi
    done
    echo "$t"
}
bl_rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
# Proportional set size summed over PIDs (fair for kamailio's shared memory).
bl_pss_kb() {
    local t=0 p v
    for p in "$@"; do
        v=$(awk '/^Pss:/ { print $2 }' "/proc/$p/smaps_rollup" 2>/dev/null || true)
        t=$((t + ${v:-0}))
    done
    echo "$t"
}

# bl_sipp_run TAG PORT TRANSPORT SCENARIO CSV CALLS LOGDIR TIMEOUT_S [sipp args...]
# One bounded sipp run (UAC) of SCENARIO against 127.0.0.1:PORT, in the
# foreground.  CSV may be "" (no -inf).  Sets BL_SIPP_RC, BL_SIPP_OK,
# BL_SIPP_FAILED, BL_SIPP_RETRANS (requests sipp retransmitted),
# BL_SIPP_UNEXPECTED, BL_SIPP_ELAPSED (seconds, wall clock) and BL_SIPP_LOG.
# Extra args give the rate/concurrency (-r 500 -l 200, -users 200) and
# scenario options such as -default_behaviors.
bl_sipp_run() {
    local tag="$1" port="$2" transport="$3" scenario="$4" csv="$5" calls="$6" logdir="$7" tmo="$8"
    shift 8
    local t0 t1 inf=()
    [[ -z "$csv" ]] || inf=(-inf "$csv")
    BL_SIPP_LOG="$logdir/sipp-$tag.log"
    mkdir -p "$logdir"
    t0=$(date +%s%N)
    BL_SIPP_RC=0
    # run in logdir: sipp drops its own stat/err files into the cwd
    (cd "$logdir" && exec timeout $((tmo + 30)) "${BL_LOAD_TASKSET[@]}" sipp "$BL_HOST:$port" \
        -sf "$scenario" "${inf[@]}" -i "$BL_HOST" -bind_local -t "$transport" \
        -m "$calls" -max_socket 4096 -timeout "${tmo}s" -timeout_error -nostdin \
        -trace_err -error_file "$logdir/sipp-$tag-errors.log" \
        "$@") >"$BL_SIPP_LOG" 2>&1 || BL_SIPP_RC=$?
    t1=$(date +%s%N)
    BL_SIPP_ELAPSED=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
    bl_sipp_parse "$BL_SIPP_LOG"
}

# bl_sipp_parse LOG: BL_SIPP_OK, BL_SIPP_FAILED (-1 if absent),
# BL_SIPP_RETRANS and BL_SIPP_UNEXPECTED from the final screens of a sipp log.
bl_sipp_parse() {
    BL_SIPP_OK=$(awk -F'|' '/Successful call/ { v = $3 } END { gsub(/ /, "", v); print (v == "" ? 0 : v) }' "$1")
    BL_SIPP_FAILED=$(awk -F'|' '/Failed call/ { v = $3 } END { gsub(/ /, "", v); print (v == "" ? -1 : v) }' "$1")
    # the last scenario screen: rows "METHOD ---->" (requests sent): field 4
    # is Retrans; rows "... <----" : the last field is Unexpected-Msg
    BL_SIPP_RETRANS=$(awk '/Scenario Screen/ { s = 0 } /^ +[A-Z]+ -+>/ { s += $4 } END { print s + 0 }' "$1")
    BL_SIPP_UNEXPECTED=$(awk '/Scenario Screen/ { u = 0 } /^ +[A-Z0-9]+ <-+ / { u += $NF } END { print u + 0 }' "$1")
}

# bl_sipp_register TAG PORT TRANSPORT CSV CALLS LOGDIR TIMEOUT_S [sipp args...]
# One bounded sipp run of register_digest.xml against 127.0.0.1:PORT (see
# bl_sipp_run for the variables it sets).
bl_sipp_register() {
    local tag="$1" port="$2" transport="$3" csv="$4" calls="$5" logdir="$6" tmo="$7"
    shift 7
    bl_sipp_run "$tag" "$port" "$transport" "$BL_SCENARIO" "$csv" "$calls" "$logdir" "$tmo" \
        -auth_uri "$BL_DOMAIN" -default_behaviors all,-bye "$@"
}

# bl_sipp_clean CALLS: was the last bl_sipp_register run fully successful?
bl_sipp_clean() {
    [[ "$BL_SIPP_RC" == 0 && "$BL_SIPP_OK" == "$1" && "$BL_SIPP_FAILED" == 0 ]]
}

bl_sipp_explain() {
    printf '  sipp exit %s, %s successful, %s failed, %s retransmissions, %ss (log: %s)\n' \
        "$BL_SIPP_RC" "$BL_SIPP_OK" "$BL_SIPP_FAILED" "$BL_SIPP_RETRANS" "$BL_SIPP_ELAPSED" "$BL_SIPP_LOG"
    grep -m3 -E 'createAuthHeader|Aborting|Dead call|Unexpected|ERROR|[Ff]atal' "$BL_SIPP_LOG" 2>/dev/null | sed 's/^/    /' | cut -c1-200 || true
}

# --- The result tally and clean-up every interop script shares ---------------
# Globals: WORK (work directory), KEEP (1 = keep it), PASSED, FAILED, RESULTS.

bl_pass() { PASSED=$((PASSED + 1)); RESULTS+=("PASS $*"); }
bl_fail() { FAILED=$((FAILED + 1)); RESULTS+=("FAIL $*"); KEEP=1; }

# bl_finish TITLE: the summary and the last line "interop: N passed, M failed";
# status 0 only if nothing failed.
bl_finish() {
    echo
    echo "== $1"
    local r
    for r in "${RESULTS[@]}"; do echo "$r"; done
    echo "interop: $PASSED passed, $FAILED failed"
    ((FAILED == 0))
}

# bl_end_work RC: stops the servers we started and removes $WORK unless it is
# kept (KEEP=1, or RC, the script's exit status, is not 0); returns RC.  The
# scripts' EXIT traps end with it.
bl_end_work() {
    local rc=$1
    bl_stop_all_servers
    if ((KEEP)) || ((rc != 0)); then
        bl_log "work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    return "$rc"
}

# bl_why_failed LOG: sipp's own explanation of a failed run (its -trace_err
# file next to LOG), indented, for the log.
bl_why_failed() {
    grep -h -o -E "(Aborting call|Call-Id: [^ ]*, receive timeout|[^:]*regexp|Failed regexp|unexpected)[^']*('[^']*')?" \
        "${1%.log}-errors.log" 2>/dev/null | head -4 | tr -d '\r' | cut -c1-240 | sed 's/^/      /' || true
    grep -h -o -m1 -E "received '[^']{0,300}" "${1%.log}-errors.log" 2>/dev/null | head -1 | tr -d '\r' | sed 's/^/      /' || true
}

# --- Helpers of the benchmark and interop scripts ----------------------------

# bl_usage SCRIPT: prints the script's header comment (its --help).
bl_usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$1"; }

# bl_bench_args SCRIPT [ARG...]: the benchmarks' common arguments.  Sets DO_KAM
# and DO_BL (--kamailio-only, --busylamp-only: measure one system), BUILD
# (build: if missing; --build: force; --no-build: never) and KEEP (--keep);
# --help prints SCRIPT's header; any other argument is an error.
bl_bench_args() {
    local script="$1" arg
    shift
    DO_KAM=1 DO_BL=1 BUILD=build KEEP=0
    for arg in "$@"; do
        case "$arg" in
        --kamailio-only) DO_BL=0 ;;
        --busylamp-only) DO_KAM=0 ;;
        --build) BUILD=force ;;
        --no-build) BUILD=never ;;
        --keep) KEEP=1 ;;
        -h | --help) bl_usage "$script"; exit 0 ;;
        *) bl_die "unknown argument: $arg (see --help)" ;;
        esac
    done
    ((DO_KAM || DO_BL)) || bl_die "--kamailio-only and --busylamp-only together measure nothing"
}

# bl_bench_workdir NAME: a benchmark's work directory (WORK, under /tmp) and its
# clean-up on exit, whatever the exit: the background processes in BG_PIDS and
# every server started are stopped, the script's own bench_cleanup runs if it
# defines one, and the directory goes unless KEEP=1 or the script failed.
bl_bench_workdir() {
    WORK="$(mktemp -d -t "$1.XXXXXX")"
    BG_PIDS=()
    trap bl_bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}
bl_bench_cleanup() {
    local rc=$? p
    for p in "${BG_PIDS[@]}"; do bl_stop_bg "$p"; done
    bl_stop_all_servers
    if declare -F bench_cleanup >/dev/null; then bench_cleanup; fi
    bl_end_work "$rc"
}

# bl_stop_bg PID: stops one background process we started (SIGINT first, so
# tcpdump flushes and sipp prints its last screen, then TERM, then KILL), waits
# for it, and drops it from BG_PIDS.  Only this PID is signalled.
bl_stop_bg() {
    local p="$1"
    [[ -n "$p" ]] || return 0
    if kill -0 "$p" 2>/dev/null; then
        kill -INT "$p" 2>/dev/null || true
        for _ in $(seq 1 30); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$p" 2>/dev/null; then kill -TERM "$p" 2>/dev/null || true; fi
        for _ in $(seq 1 20); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$p" 2>/dev/null; then kill -KILL "$p" 2>/dev/null || true; fi
    fi
    wait "$p" 2>/dev/null || true
    local keep=() q
    for q in "${BG_PIDS[@]}"; do [[ "$q" == "$p" ]] || keep+=("$q"); done
    BG_PIDS=("${keep[@]}")
}

# bl_median [-d DIGITS] NUMBERS...: the median (the mean of the middle two if
# even, with DIGITS decimals, 1 by default; -d 0 for a whole number that shell
# arithmetic can use), "" if none.
bl_median() {
    local digits=1
    if [[ "${1:-}" == -d ]]; then digits="$2"; shift 2; fi
    (($#)) || { echo ""; return; }
    printf '%s\n' "$@" | sort -g | awk -v d="$digits" '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.*f\n", d, (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# bl_udp_rcvbuf_errors: the kernel's UDP RcvbufErrors counter (system-wide).
bl_udp_rcvbuf_errors() {
    awk '/^Udp:/ { if (!h) { for (i = 1; i <= NF; i++) if ($i == "RcvbufErrors") c = i; h = 1 } else { print $c + 0; exit } }' /proc/net/snmp
}
