#!/usr/bin/env python3
"""Where a server's CPU goes: groups `perf record` samples (self time) into categories.

Usage: perf_summary.py FILE.data [FILE.data ...] [--top N]

Reads each file with `perf report --stdio --no-children --sort dso,sym`, adds the files up
(weighted by their sample counts) and prints one line per category (share of all samples),
then the N hottest symbols. The categories are the leads of the performance issue: the
allocator, the kernel's network path, syscalls and scheduling, the disk, and our own modules
by path (busylamp::sip, ::transaction, ::presence, ...). A symbol is put in the first
category whose pattern matches it (dso, symbol), so the order below matters.
"""
import re
import subprocess
import sys
from collections import defaultdict

# (name, dso pattern, symbol pattern): the first whose patterns both match takes the symbol.
# Kernel patterns match at the start of the name (after any underscores).
KERNEL_NET = r"^_*(udp|tcp|ip|inet|sock|skb|net|dev_|loopback|napi|nf_|sys_(send|recv)|sendmsg|recvmsg|csum|dst_|neigh|fib|rt_|lock_sock|release_sock|sk_|copy_|raw_v|move_addr|validate_xmit|process_backlog|do_softirq|handle_softirq)"
KERNEL_DISK = r"^_*(ext4|jbd2|fsync|blk|bio|vfs_|filemap|page_cache|writeback|iomap|mpage|xfs|do_fsync|nvme|virtblk|virtio|scsi)"
KERNEL_SCHED = r"^_*(futex|sched|schedule|switch|finish_task_switch|wake|try_to_wake|ttwu|epoll|ep_|do_epoll|syscall|do_syscall|entry_|x64_sys|hrtimer|timerfd|clock|tick|enqueue|dequeue|pick_|update_|select_task|native_|exit_to|prepare_exit|raw_spin|_raw_spin|pv_|restore|irq)"
KERNEL_MEM = r"^_*(clear_page|handle_mm|do_anonymous|page_|alloc_pages|get_page|mem_cgroup|memcg|get_mem_cgroup|kmem_cache|kmalloc|kfree|do_user_addr_fault|exc_page_fault|rmqueue|free_unref|release_pages|zap_|unmap|mmap|do_madvise|madvise|folio|lru_)"
CATEGORIES = [
    ("allocator (malloc/free/realloc)", r"libc", r"malloc|free|realloc|calloc|tcache|unlink_chunk|memalign|_int_|arena|sysmalloc|consolidate"),
    ("allocator (malloc/free/realloc)", r"", r"^(__rust_(alloc|dealloc|realloc)|mi_|_mi_|_rjem|je_)"),
    ("memcpy/memmove/memset/memcmp", r"", r"mem(cpy|move|set|cmp|chr)|__memc|bcmp|strlen"),
    ("kernel: network (UDP/TCP/IP, sockets)", r"kernel", KERNEL_NET),
    ("kernel: disk (fsync, ext4, page cache)", r"kernel", KERNEL_DISK),
    ("kernel: memory (page faults, slab)", r"kernel", KERNEL_MEM),
    ("kernel: scheduling, wakeups, futex, epoll, syscall entry", r"kernel", KERNEL_SCHED),
    ("kernel: other", r"kernel", r""),
    ("digest crypto (md5/sha2/hmac)", r"", r"md5|md_5|sha2|sha256|Sha256|Md5|hmac|compress256|digest"),
    ("busylamp: SIP codec (parse/print)", r"", r"busylamp::sip::"),
    ("busylamp: transactions", r"", r"busylamp::transaction::"),
    ("busylamp: transport", r"", r"busylamp::transport::"),
    ("busylamp: server core", r"", r"busylamp::server::"),
    ("busylamp: registrar", r"", r"busylamp::registrar::"),
    ("busylamp: presence/pua/bla", r"", r"busylamp::(presence|pua|bla)::"),
    ("busylamp: proxy/dialog", r"", r"busylamp::(proxy|dialog|router)::"),
    ("busylamp: auth", r"", r"busylamp::auth::"),
    ("busylamp: storage (queue, codec)", r"", r"busylamp::storage::"),
    ("busylamp: timers (deadline)", r"", r"busylamp::deadline::"),
    ("storage engine (sled, redb)", r"", r"sled::|redb::|crossbeam_epoch|crossbeam"),
    ("tokio runtime", r"", r"tokio::|mio::"),
    ("hashing, maps", r"", r"hashbrown|core::hash|siphash|SipHasher|std::collections::hash|BTreeMap|btree"),
    ("formatting (core::fmt)", r"", r"core::fmt|alloc::fmt|fmt::write|Formatter|to_string"),
    ("XML (quick_xml)", r"", r"quick_xml"),
    ("tracing", r"", r"tracing"),
    ("Kamailio core", r"kamailio$", r""),
    ("Kamailio modules", r"\.so$", r""),
    ("libc other (syscall wrappers, clock_gettime, ...)", r"libc", r""),
    ("other", r"", r""),
]

LINE = re.compile(r"^\s*([0-9.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)$")


def report(path):
    """(samples, [(percent, dso, kernel?, symbol)]) of one perf.data, only the processes named
    in the .pids file beside it (the recording is machine-wide)."""
    pids = []
    try:
        with open(path[: -len(".data")] + ".pids") as f:
            pids = ["--pid", f.read().strip()]
    except OSError:
        pass
    out = subprocess.run(
        ["perf", "report", "-i", path, "--stdio", "--no-children", "--sort", "dso,sym",
         "--percent-limit", "0"] + pids,
        capture_output=True, text=True, check=False,
    ).stdout
    samples = 0
    rows = []
    for line in out.splitlines():
        m = re.match(r"^# Samples: (\d+)([KM]?)", line)
        if m:
            samples += int(m.group(1)) * {"": 1, "K": 1000, "M": 1000000}[m.group(2)]
            continue
        m = LINE.match(line)
        if m:
            pct, dso, level, sym = float(m.group(1)), m.group(2), m.group(3), m.group(4).strip()
            rows.append((pct, dso, level == "k", sym))
    return samples, rows


def category(dso, kernel, sym):
    d = "kernel" if kernel else dso
    for name, dso_re, sym_re in CATEGORIES:
        if dso_re and not re.search(dso_re, d):
            continue
        if sym_re and not re.search(sym_re, sym):
            continue
        return name
    return "other"


def main():
    args = sys.argv[1:]
    top = 25
    if "--top" in args:
        i = args.index("--top")
        top = int(args[i + 1])
        del args[i:i + 2]
    total = 0
    cats = defaultdict(float)
    syms = defaultdict(float)
    for path in args:
        n, rows = report(path)
        total += n
        for pct, dso, kernel, sym in rows:
            w = pct / 100.0 * n
            cats[category(dso, kernel, sym)] += w
            syms[(dso if not kernel else "[kernel]", sym)] += w
    # perf's percentages are of every sample in the (machine-wide) file: the server's share
    # is what its rows add up to.
    recorded = total
    total = sum(cats.values())
    if total == 0:
        print("no samples")
        return 1
    print(f"samples: {total:.0f} of the server's processes ({recorded} recorded machine-wide) in {len(args)} file(s)")
    print("share  category")
    for name, w in sorted(cats.items(), key=lambda kv: -kv[1]):
        print(f"{100 * w / total:5.1f}%  {name}")
    print(f"\nhottest {top} symbols (self time):")
    for (dso, sym), w in sorted(syms.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{100 * w / total:5.1f}%  {sym[:110]}  ({dso})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
