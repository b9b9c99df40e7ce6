#!/usr/bin/env python3
"""Lamp latency analysis for tests/bench/calls.sh: 180 Ringing -> BLF NOTIFY.

Reads a loopback capture (tcpdump -i lo -w FILE, classic pcap, UDP only) of
calls through a proxy whose callees each have W busy-lamp-field watchers
(calls_watch.xml, Event: dialog).  The capture holds what the callee UAS
sends the proxy (its 180s) and what the proxy sends the watchers (NOTIFYs).

For every call (Call-ID of a 180 from the UAS port to the proxy port; its
first transmission on the wire = t180) and every watcher subscription of
that call's callee (the NOTIFY Call-IDs whose dialog-info entity is the
callee, the To URI of the 180), the first NOTIFY (first transmission) at or
after t180 whose body has a <dialog> with that call-id in <state>early:
  latency = t(NOTIFY) - t180    (the server's: wire to wire, no sipp in it)
Reported: p50/p99/max over all such NOTIFYs (the whole fan-out), and p50/p99
of the LAST one per call (when the last lamp of that callee blinks).
A watcher that never gets early for a call is "missing" (a server may
coalesce early with confirmed when the ring is shorter than its latency).

Correctness, per watcher and call, over the NOTIFYs in the order they left:
  regressions = NOTIFYs that show a call in an earlier state than one shown
                before (trying < proceeding < early < confirmed < terminated;
                the highest state over the call's dialogs counts: calls.sh
                calls have one branch each, a forked call whose loser ends
                before the winner would count one), i.e. a lamp going back,
                e.g. ringing again after it went busy/off;
  cseq_regressions = NOTIFYs with a lower CSeq than one sent before in the
                same subscription (RFC 3261 12.2.2: phones drop BLF on it).

Usage: calls_lamp.py CAPTURE.pcap PROXY_PORT UAS_PORT WATCHER_PORT [W]
  W: watchers per callee expected (only printed next to what was seen).
Output, one line of key=value:
  LAMP calls=N watchers_per_callee=.. expected=.. delivered=.. missing=..
       p50_ms=.. p99_ms=.. max_ms=.. last_p50_ms=.. last_p99_ms=..
       last_max_ms=.. regressions=.. cseq_regressions=.. notifies=..
       retrans=.. early_in_first=..
  (early_in_first: share of (call, watcher) pairs whose early NOTIFY is the
  first NOTIFY about that call: 1.0 when nothing came before early)
Where the time goes, when the capture also holds the watchers' 200s to the
NOTIFYs (calls.sh captures them): a server that keeps one NOTIFY in flight
per subscription holds the early NOTIFY back until the watcher answered the
previous one (e.g. the callee's "trying", sent when the INVITE came):
  gated            share of early NOTIFYs whose previous NOTIFY in that
                   subscription was answered only after the 180 arrived
  gate_wait_p50_ms 180 -> that 200 (median over the gated ones)
  after_gate_*_ms  the 200 (or the 180 when not gated) -> the early NOTIFY:
                   the server's own time (coalescing, writes) once free to send
A second line splits the early NOTIFYs slower than SLOW_MS (3 ms) by cause:
  SLOW n=.. gated=.. whole_fanout=.. tail_only=.. silent=.. behind_sends=..
       thirds=a/b/c
  gated         held back by the watcher's answer (above)
  whole_fanout  the call's first early NOTIFY was slow too (the whole fan-out
                left late: the server did not run, or was busy), tail_only: the
                call's first one was fast, this one queued behind the fan-out
  silent        of the whole_fanout ones: the server sent no NOTIFY at all
                between the 180 and its first early one (it was not running:
                waiting for its core, or for something it awaited);
                behind_sends: it was sending other NOTIFYs meanwhile (another
                call's fan-out, answers to the watchers' 200s)
  thirds        how many fell in the first, second and last third of the
                round (by the 180's time)
  burst_max     the most NOTIFYs the proxy sent in any BURST_MS (3 ms): about
                one call's fan-out normally; hundreds when fan-outs came due
                together (expiry timers at whole seconds did, before the fourth
                pass: 200 every second at 20 calls/s)
"""

import bisect
import re
import sys

sys.dont_write_bytecode = True
from presence_fanout import packets, parse_sip, pct  # noqa: E402 (same directory)

DIALOG = re.compile(rb"<dialog(?=[\s>])([^>]*)>(.*?)</dialog>", re.S)
CALLID_ATTR = re.compile(rb"""\bcall-id\s*=\s*["']([^"']*)["']""")
STATE = re.compile(rb"<state\b[^>]*>\s*([a-z]+)\s*</state>")
ENTITY = re.compile(rb"""<dialog-info\b[^>]*\bentity\s*=\s*["']([^"']*)["']""")
URI = re.compile(rb"<?(sips?:[^>;\s]+)")
SLOW_MS = 3.0
BURST_MS = 3.0
RANK = {b"trying": 0, b"proceeding": 1, b"early": 2, b"confirmed": 3, b"terminated": 4}


def calls_in(body):
    """{call-id: highest state rank over its dialogs, early seen?} of a dialog-info body"""
    out = {}
    for attrs, inner in DIALOG.findall(body):
        m = CALLID_ATTR.search(attrs)
        s = STATE.search(inner)
        if not m or not s:
            continue
        cid, st = m.group(1), s.group(1)
        rank, early = out.get(cid, (-1, False))
        out[cid] = (max(rank, RANK.get(st, -1)), early or st == b"early")
    return out


def norm_uri(u):
    m = URI.search(u)
    return m.group(1).lower() if m else u.strip().lower()


def main():
    if len(sys.argv) not in (5, 6):
        raise SystemExit(__doc__)
    path = sys.argv[1]
    pport, uport, wport = (int(a) for a in sys.argv[2:5])
    w_expected = sys.argv[5] if len(sys.argv) == 6 else "?"
    t180 = {}  # call-id -> (t, callee URI)
    ok200 = {}  # (subscription call-id, NOTIFY CSeq number) -> first 200 from the watcher
    seen_notify = set()
    notify_times = []  # every NOTIFY the proxy sent, retransmissions too
    retrans = 0
    subs = {}  # subscription call-id -> [(t, cseq, body)]
    entity_of = {}  # subscription call-id -> entity URI
    for ts, sport, dport, payload in packets(path):
        if sport == uport and dport == pport and payload.startswith(b"SIP/2.0 180"):
            msg = parse_sip(payload)
            if msg is None:
                continue
            _first, hdr, _body = msg
            cid = hdr.get(b"call-id", b"")
            if cid and cid not in t180:
                t180[cid] = (ts, norm_uri(hdr.get(b"to", b"")))
        elif sport == wport and dport == pport and payload.startswith(b"SIP/2.0 200"):
            msg = parse_sip(payload)
            if msg is None:
                continue
            _first, hdr, _body = msg
            cs = hdr.get(b"cseq", b"").split()
            if len(cs) == 2 and cs[1] == b"NOTIFY" and cs[0].isdigit():
                ok200.setdefault((hdr.get(b"call-id", b""), int(cs[0])), ts)
        elif sport == pport and dport == wport and payload.startswith(b"NOTIFY "):
            msg = parse_sip(payload)
            if msg is None:
                continue
            _first, hdr, body = msg
            notify_times.append(ts)
            key = (hdr.get(b"call-id", b""), hdr.get(b"cseq", b""))
            if key in seen_notify:
                retrans += 1
                continue
            seen_notify.add(key)
            cs = key[1].split()
            cseq = int(cs[0]) if cs and cs[0].isdigit() else -1
            subs.setdefault(key[0], []).append((ts, cseq, body))
            if key[0] not in entity_of:
                m = ENTITY.search(body)
                if m:
                    entity_of[key[0]] = m.group(1).lower()

    watchers_of = {}  # callee URI -> [subscription call-ids]
    for sid, ent in entity_of.items():
        watchers_of.setdefault(ent, []).append(sid)

    # per subscription: NOTIFYs in time order, parsed once
    parsed = {}
    cseq_regress = 0
    for sid, lst in subs.items():
        lst.sort(key=lambda x: x[0])
        hi = -1
        out = []
        for (t, cseq, body) in lst:
            if cseq < hi:
                cseq_regress += 1
            hi = max(hi, cseq)
            out.append((t, calls_in(body), cseq))
        parsed[sid] = out

    lat, last, missing, delivered, expected, regress, first_ok = [], [], 0, 0, 0, 0, 0
    gated, after_gate, gate_wait = 0, [], []
    sent = sorted(t for lst in parsed.values() for (t, _c, _s) in lst)  # every NOTIFY's time
    t_first = min((t for t, _ in t180.values()), default=0.0)
    t_last = max((t for t, _ in t180.values()), default=0.0)
    slow = {"n": 0, "gated": 0, "whole_fanout": 0, "tail_only": 0, "silent": 0, "behind_sends": 0}
    thirds = [0, 0, 0]
    for cid, (t0, callee) in t180.items():
        ws = watchers_of.get(callee, [])
        per_call = []
        slow_here = []  # (hit time, gated) of this call's slow early NOTIFYs
        for sid in ws:
            expected += 1
            shown_rank = -1
            hit = None
            prev_cseq = None  # the NOTIFY sent before the early one
            first_notify_about_call = None
            last_cseq = None
            for (t, calls, cseq) in parsed[sid]:
                if hit is None and t >= t0 and cid in calls and calls[cid][1]:
                    prev_cseq = last_cseq
                last_cseq = cseq
                if cid not in calls:
                    continue
                rank, early = calls[cid]
                if first_notify_about_call is None:
                    first_notify_about_call = t
                if rank < shown_rank:
                    regress += 1
                shown_rank = max(shown_rank, rank)
                if hit is None and early and t >= t0:
                    hit = t
            if hit is None:
                missing += 1
                continue
            delivered += 1
            if first_notify_about_call == hit:
                first_ok += 1
            per_call.append((hit - t0) * 1000.0)
            # one NOTIFY in flight per subscription: was the early one held
            # back until the watcher answered the previous NOTIFY?
            t_ok = ok200.get((sid, prev_cseq)) if prev_cseq is not None else None
            is_gated = t_ok is not None and t_ok > t0
            if is_gated:
                gated += 1
                gate_wait.append((t_ok - t0) * 1000.0)
                after_gate.append((hit - t_ok) * 1000.0)
            else:
                after_gate.append((hit - t0) * 1000.0)
            if (hit - t0) * 1000.0 > SLOW_MS:
                slow_here.append(is_gated)
        if slow_here:
            first_hit = t0 + min(per_call) / 1000.0
            whole = min(per_call) > SLOW_MS
            # NOTIFYs the server sent between the 180 and this call's first early one
            others = bisect.bisect_left(sent, first_hit) - bisect.bisect_right(sent, t0)
            span = (t_last - t_first) or 1.0
            third = min(2, int(3 * (t0 - t_first) / span))
            for g in slow_here:
                slow["n"] += 1
                slow["gated"] += g
                slow["whole_fanout" if whole else "tail_only"] += 1
                if whole:
                    slow["silent" if others == 0 else "behind_sends"] += 1
                thirds[third] += 1
        lat.extend(per_call)
        if per_call:
            last.append(max(per_call))
    lat.sort()
    last.sort()
    after_gate.sort()
    gate_wait.sort()
    fmt = lambda v: "n/a" if v is None else f"{v:.1f}"
    print(
        f"LAMP calls={len(t180)} watchers_per_callee={w_expected} subscriptions={len(subs)} "
        f"expected={expected} delivered={delivered} missing={missing} "
        f"p50_ms={fmt(pct(lat, 50))} p99_ms={fmt(pct(lat, 99))} max_ms={fmt(lat[-1] if lat else None)} "
        f"last_p50_ms={fmt(pct(last, 50))} last_p99_ms={fmt(pct(last, 99))} last_max_ms={fmt(last[-1] if last else None)} "
        f"regressions={regress} cseq_regressions={cseq_regress} "
        f"notifies={len(seen_notify)} retrans={retrans} "
        f"early_in_first={(f'{first_ok / delivered:.3f}' if delivered else 'n/a')} "
        f"gated={(f'{gated / delivered:.3f}' if delivered else 'n/a')} "
        f"gate_wait_p50_ms={fmt(pct(gate_wait, 50))} after_gate_p50_ms={fmt(pct(after_gate, 50))} "
        f"after_gate_p99_ms={fmt(pct(after_gate, 99))} watcher_200s={len(ok200)}"
    )
    print(
        "SLOW " + " ".join(f"{k}={v}" for k, v in slow.items()) + f" thirds={'/'.join(map(str, thirds))}"
        + f" burst_max={burst_max(notify_times, BURST_MS)}"
        + f" (early NOTIFYs slower than {SLOW_MS:g} ms, by cause; burst_max: the most NOTIFYs"
        + f" sent in any {BURST_MS:g} ms)"
    )


def burst_max(times, window_ms):
    """The most timestamps in any window of window_ms: one call's fan-out is its callee's
    watchers (and the caller's); far more means fan-outs that came due together (e.g. timers
    at one instant), which a 180 arriving then waits out."""
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] < t - window_ms / 1000:
            j += 1
        best = max(best, i - j + 1)
    return best


if __name__ == "__main__":
    main()
