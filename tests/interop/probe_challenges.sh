#!/usr/bin/env bash
# Probe how the installed sipp answers digest challenges, using only sipp on
# loopback: a sipp UAS sends a hand-written 401 (one or two WWW-Authenticate
# headers, MD5 and/or SHA-256, distinct nonces) and a sipp UAC running
# tests/interop/register_digest.xml answers it.  For each case we print the
# UAC's exit code, the Authorization it sent (algorithm + which nonce), or the
# error it died with.
#
# Usage: tests/interop/probe_challenges.sh
# Each sipp is bounded (-m 1, -timeout 10s) and killed by PID on exit.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SCENARIO="$HERE/register_digest.xml"
command -v sipp >/dev/null || { echo "probe: sipp missing (apt-get install sip-tester)" >&2; exit 2; }

WORK="$(mktemp -d -t busylamp-probe.XXXXXX)"
UAS_PID=""
cleanup() {
    if [[ -n "$UAS_PID" ]] && kill -0 "$UAS_PID" 2>/dev/null; then
        kill "$UAS_PID" 2>/dev/null || true
        wait "$UAS_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { # a loopback port free for both UDP and TCP
    local p
    for _ in $(seq 1 200); do
        p=$(( 20000 + RANDOM % 40000 ))
        if [[ -z "$(ss -Htuan "( sport = :$p )" 2>/dev/null)" ]]; then
            echo "$p"; return 0
        fi
    done
    echo "probe: no free port found" >&2; return 1
}

printf 'SEQUENTIAL\nu0001;[authentication username=u0001 password=pw0001];example.test\n' > "$WORK/users.csv"

SHA='WWW-Authenticate: Digest realm="example.test", nonce="nonce-for-sha256", qop="auth", algorithm=SHA-256'
MD5='WWW-Authenticate: Digest realm="example.test", nonce="nonce-for-md5", qop="auth", algorithm=MD5'

probe() { # name, challenge header lines...
    local name="$1"; shift
    local hdrs; hdrs="$(printf '      %s\n' "$@")"
    cat > "$WORK/uas.xml" <<EOF
<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="challenge_uas">
  <recv request="REGISTER"/>
  <send>
    <![CDATA[

      SIP/2.0 401 Unauthorized
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]probe[call_number]
      [last_Call-ID:]
      [last_CSeq:]
$hdrs
      Content-Length: 0

    ]]>
  </send>
  <recv request="REGISTER"/>
  <send>
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]probe[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      [last_Contact:]
      Content-Length: 0

    ]]>
  </send>
</scenario>
EOF
    local port; port="$(free_port)"
    rm -f "$WORK/uac_msg.log"
    (cd "$WORK" && exec sipp -sf "$WORK/uas.xml" -i 127.0.0.1 -p "$port" -m 1 \
        -timeout 10s -nostdin >"$WORK/uas.out" 2>&1) &
    UAS_PID=$!
    sleep 0.5
    local rc=0
    (cd "$WORK" && exec timeout 20 sipp "127.0.0.1:$port" -sf "$SCENARIO" -inf "$WORK/users.csv" \
        -i 127.0.0.1 -t u1 -m 1 -auth_uri example.test -default_behaviors all,-bye \
        -timeout 10s -nostdin -trace_msg -message_file "$WORK/uac_msg.log" \
        >"$WORK/uac.out" 2>&1) || rc=$?
    kill "$UAS_PID" 2>/dev/null || true
    wait "$UAS_PID" 2>/dev/null || true
    UAS_PID=""
    local auth err
    auth="$(grep -m1 '^Authorization:' "$WORK/uac_msg.log" 2>/dev/null || true)"
    err="$(grep -m1 -o 'createAuthHeader:.*' "$WORK/uac.out" 2>/dev/null || true)"
    printf '%-28s sipp exit=%-3s ' "$name" "$rc"
    if [[ -n "$auth" ]]; then
        printf 'answered: algorithm=%s nonce=%s\n' \
            "$(sed -n 's/.*algorithm=\([A-Za-z0-9-]*\).*/\1/p' <<<"$auth")" \
            "$(sed -n 's/.*nonce="\([^"]*\)".*/\1/p' <<<"$auth")"
    else
        printf 'no Authorization sent; error: %s\n' "${err:-see sipp output}"
    fi
}

echo "probe: $(sipp -v 2>&1 | grep -m1 -o 'SIPp v[^ ]*')"
probe "MD5 only"              "$MD5"
probe "SHA-256 only"          "$SHA"
probe "SHA-256 then MD5"      "$SHA" "$MD5"
probe "MD5 then SHA-256"      "$MD5" "$SHA"
