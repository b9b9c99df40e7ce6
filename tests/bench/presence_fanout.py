#!/usr/bin/env python3
"""PUBLISH -> NOTIFY fan-out analysis for tests/bench/presence.sh.

Reads a loopback capture (tcpdump -i lo -w FILE, classic pcap, UDP only) of
one fan-out run: W watchers subscribed to one presentity (presence_watch.xml)
and one or more publisher calls (presence_publish.xml), each a series of
PUBLISHes whose PIDF carries the marker "pub-N" (N = the PUBLISH's CSeq;
presence.sh gives each round its own -base_cseq, so N is unique in a file).

Pairing, per PUBLISH N (its first transmission on the wire, t_pub):
  for every watcher dialog (Call-ID of the NOTIFYs), the first NOTIFY whose
  body carries a marker M >= N, i.e. the first NOTIFY that shows N's change
  A watcher that never gets N's own NOTIFY but a later one counts as
  "coalesced" for N (RFC 6665 rate control allows that); a NOTIFY that
  arrives after one with a later marker counts as "out_of_order" (the
  watcher is shown an older state after a newer one).  Latency of N = time of the LAST
  of those NOTIFYs (over all watchers) - t_pub.  A watcher that never shows
  N's change counts as "missing" for N.
  Times are capture timestamps of the first transmission (retransmissions
  (same Call-ID + CSeq) are counted, not used), so the figure is the
  server's: PUBLISH on the wire -> NOTIFY on the wire, excluding sipp.
NOTIFYs/s of a round = NOTIFYs carrying a marker of that round (first
transmissions) / (last such NOTIFY - first PUBLISH of the round).

Fallback, if no NOTIFY body carries a "pub-" marker (a server that rewrites
the PIDF and drops <note>): NOTIFYs are paired by <basic> state and order:
the first NOTIFY to each watcher at or after t_pub whose basic state equals
the PUBLISH's.  That is exact only while latency < the PUBLISH spacing, so
the output says "fallback=basic" and the figures must be read with care.

Output: one line per round (publisher Call-ID), space-separated key=value:
  ROUND round=K publishes=P watchers=W expected=W*P delivered=D missing=M
        coalesced=C out_of_order=O p50_ms=.. p99_ms=.. max_ms=.. notify_per_s=..
        pub_interval_ms=(mean time between two PUBLISHes) publish_200_ms=..
        first_notify_ms=.. spread_ms=.. method=marker|basic
  (the last three: medians over the round's PUBLISHes of PUBLISH -> its
  200, PUBLISH -> the first watcher's NOTIFY showing it, first -> last
  watcher's: where the latency goes)
and a final TOTAL line with the NOTIFY retransmission count and
cseq_regressions: NOTIFYs (first transmissions) that reached a watcher after
one with a higher CSeq in the same dialog.
Usage: presence_fanout.py CAPTURE.pcap SERVER_PORT [WATCHER_PORT]
  WATCHER_PORT: only NOTIFYs sent to this port count (the watcher sipp's);
  without it every NOTIFY the server sends does, including retransmissions
  to subscriptions left over from earlier steps.
"""

import bisect
import re
import struct
import sys

MARK = re.compile(rb"pub-(\d+)")
BASIC = re.compile(rb"<(?:[A-Za-z0-9_]+:)?basic>\s*(open|closed)\s*<", re.I)


def packets(path):
    with open(path, "rb") as f:
        gh = f.read(24)
        if len(gh) < 24:
            return
        magic = gh[:4]
        if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
            endian = "<"
        elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
            endian = ">"
        else:
            raise SystemExit(f"{path}: not a classic pcap file (use tcpdump -w)")
        nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
        linktype = struct.unpack(endian + "I", gh[20:24])[0]
        while True:
            ph = f.read(16)
            if len(ph) < 16:
                return
            sec, frac, incl, _orig = struct.unpack(endian + "IIII", ph)
            data = f.read(incl)
            if len(data) < incl:
                return
            ts = sec + frac / (1e9 if nano else 1e6)
            if linktype == 1:  # Ethernet (Linux lo)
                if len(data) < 14:
                    continue
                etype = struct.unpack("!H", data[12:14])[0]
                ip = data[14:]
                if etype != 0x0800:
                    continue
            elif linktype == 113:  # Linux cooked
                ip = data[16:]
            elif linktype in (0, 108):  # BSD loopback / null
                ip = data[4:]
            elif linktype == 101:  # raw IP
                ip = data
            else:
                continue
            if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 17:
                continue
            ihl = (ip[0] & 15) * 4
            udp = ip[ihl:]
            if len(udp) < 8:
                continue
            sport, dport = struct.unpack("!HH", udp[:4])
            yield ts, sport, dport, udp[8:]


def parse_sip(payload):
    head, _, body = payload.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if not lines:
        return None
    first = lines[0]
    hdr = {}
    for ln in lines[1:]:
        name, sep, value = ln.partition(b":")
        if not sep:
            continue
        key = name.strip().lower()
        key = {b"i": b"call-id", b"f": b"from", b"t": b"to", b"v": b"via"}.get(key, key)
        hdr.setdefault(key, value.strip())
    return first, hdr, body


def pct(vals, p):
    """Nearest-rank percentile of a sorted list."""
    if not vals:
        return None
    k = max(1, -(-len(vals) * p // 100))  # ceil
    return vals[min(len(vals), k) - 1]


def main():
    if len(sys.argv) not in (3, 4):
        raise SystemExit(__doc__)
    path, port = sys.argv[1], int(sys.argv[2])
    wport = int(sys.argv[3]) if len(sys.argv) == 4 else None
    publishes = {}  # N -> (t, state, round_callid)
    pub_rounds = []  # round call-ids in order of appearance
    notifies = {}  # (callid, cseq) -> (t, marker or None, state)
    retrans = 0
    pub_seen = set()
    cseqs = {}  # callid -> [(t, cseq number)] of first transmissions
    pub_ok = {}  # PUBLISH CSeq number -> first response from the server
    for ts, sport, dport, payload in packets(path):
        if dport != port and sport != port:
            continue
        msg = parse_sip(payload)
        if msg is None:
            continue
        first, hdr, body = msg
        if first.startswith(b"PUBLISH ") and dport == port:
            cseq = hdr.get(b"cseq", b"")
            callid = hdr.get(b"call-id", b"")
            key = (callid, cseq)
            if key in pub_seen:
                continue
            pub_seen.add(key)
            m = MARK.search(body)
            if not m:
                continue  # the initial ("init") and the removing PUBLISH
            st = BASIC.search(body)
            n = int(m.group(1))
            if callid not in pub_rounds:
                pub_rounds.append(callid)
            publishes[n] = (ts, st.group(1).lower() if st else None, callid)
        elif first.startswith(b"SIP/2.0 ") and sport == port and b"PUBLISH" in hdr.get(b"cseq", b""):
            cs = hdr.get(b"cseq", b"").split()
            if cs and cs[0].isdigit():
                pub_ok.setdefault(int(cs[0]), ts)
        elif first.startswith(b"NOTIFY ") and sport == port and (wport is None or dport == wport):
            key = (hdr.get(b"call-id", b""), hdr.get(b"cseq", b""))
            if key in notifies:
                retrans += 1
                continue
            m = MARK.search(body)
            st = BASIC.search(body)
            notifies[key] = (ts, int(m.group(1)) if m else None, st.group(1).lower() if st else None)
            cs = key[1].split()
            if cs and cs[0].isdigit():
                cseqs.setdefault(key[0], []).append((ts, int(cs[0])))

    # per watcher dialog: NOTIFYs in time order
    watchers = {}
    for (callid, _cseq), (t, mk, st) in notifies.items():
        watchers.setdefault(callid, []).append((t, mk, st))
    for lst in watchers.values():
        lst.sort(key=lambda x: x[0])
    use_marker = any(mk is not None for (_, mk, _) in notifies.values())
    method = "marker" if use_marker else "basic"

    for rnd, rcall in enumerate(pub_rounds, 1):
        ns = sorted(n for n, (_, _, c) in publishes.items() if c == rcall)
        if not ns:
            continue
        t_first = publishes[ns[0]][0]
        interval = (publishes[ns[-1]][0] - t_first) / (len(ns) - 1) * 1000.0 if len(ns) > 1 else 0.0
        lo, hi = ns[0], ns[-1]
        # watchers that took part: those with a NOTIFY after this round began
        active = [cid for cid, lst in watchers.items() if any(t >= t_first for (t, _, _) in lst)]
        lat = []
        missing = coalesced = delivered = out_of_order = 0
        t_last = t_first
        nset = set(ns)
        # hits[n][cid] = (time, marker) of the first NOTIFY to cid showing n
        hits = {n: {} for n in ns}
        for cid in active:
            lst = watchers[cid]
            if use_marker:
                # one pass in time order: the NOTIFY at which the highest
                # marker seen so far first reaches n is the first showing n
                runmax = lo - 1
                got = set()
                for (t, mk, _st) in lst:
                    if mk is None or not lo <= mk <= hi:
                        continue
                    delivered += 1
                    got.add(mk)
                    t_last = max(t_last, t)
                    if mk < runmax:
                        out_of_order += 1
                    if mk > runmax:
                        for n in range(runmax + 1, mk + 1):
                            if n in nset:
                                hits[n][cid] = (t, mk)
                        runmax = mk
                for n in ns:
                    if n not in got and cid in hits[n]:
                        coalesced += 1
            else:
                times = [t for (t, _, _) in lst]
                for n in ns:
                    t_pub, state, _ = publishes[n]
                    for i in range(bisect.bisect_left(times, t_pub), len(lst)):
                        if lst[i][2] == state:
                            hits[n][cid] = (lst[i][0], n)
                            delivered += 1
                            t_last = max(t_last, lst[i][0])
                            break
        for n in ns:
            t_pub = publishes[n][0]
            h = hits[n]
            missing += len(active) - len(h)
            if h:
                lat.append((max(t for (t, _) in h.values()) - t_pub) * 1000.0)
        lat.sort()
        # where the time goes, per PUBLISH (medians): PUBLISH -> its response,
        # PUBLISH -> first NOTIFY showing it, first -> last such NOTIFY
        acks, firsts, spreads = [], [], []
        for n in ns:
            t_pub = publishes[n][0]
            if n in pub_ok:
                acks.append((pub_ok[n] - t_pub) * 1000.0)
            if hits[n]:
                ts_ = [t for (t, _) in hits[n].values()]
                firsts.append((min(ts_) - t_pub) * 1000.0)
                spreads.append((max(ts_) - min(ts_)) * 1000.0)
        med = lambda v: sorted(v)[len(v) // 2] if v else None
        span = t_last - t_first
        nps = delivered / span if span > 0 else 0.0
        fmt = lambda v: "n/a" if v is None else f"{v:.1f}"
        print(
            f"ROUND round={rnd} publishes={len(ns)} watchers={len(active)} "
            f"expected={len(active) * len(ns)} delivered={delivered} missing={missing} "
            f"coalesced={coalesced} out_of_order={out_of_order} p50_ms={fmt(pct(lat, 50))} p99_ms={fmt(pct(lat, 99))} "
            f"max_ms={fmt(lat[-1] if lat else None)} notify_per_s={nps:.0f} pub_interval_ms={interval:.1f} "
            f"publish_200_ms={fmt(med(acks))} first_notify_ms={fmt(med(firsts))} spread_ms={fmt(med(spreads))} "
            f"method={method}"
        )
    # NOTIFY CSeq must grow in the order the watcher receives them (RFC 3261
    # §12.2.2: a lower CSeq in a dialog is rejected; phones drop BLF on it)
    regress = 0
    for lst in cseqs.values():
        lst.sort()
        hi_cseq = -1
        for (_t, c) in lst:
            if c < hi_cseq:
                regress += 1
            hi_cseq = max(hi_cseq, c)
    print(f"TOTAL notifies={len(notifies)} retrans={retrans} cseq_regressions={regress} publishes={len(publishes)} rounds={len(pub_rounds)} method={method}")


if __name__ == "__main__":
    main()
