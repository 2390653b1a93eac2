#!/usr/bin/env python3
"""Where a parallel run leaves cores idle: the functions running while only one thread works.

    perf record -e cpu-clock -F 4000 -o /tmp/p.data target/release/train-time --iters 8
    perf script -i /tmp/p.data -F tid,time,ip,sym > /tmp/p.txt
    python3 benches/perf_serial.py /tmp/p.txt [--window 0.002] [--skip 0.3] [--busy 3]

The samples are cut into windows of --window seconds (after the first --skip of the run, the
set-up); a thread is busy in a window when it has at least --busy samples outside rayon's and
our spin and sleep functions. Windows with one busy thread are the serial part of the run:
the script prints their share of the windows and the functions that ran in them (the top of
each sample's stack; add `--call-graph dwarf` to `perf record` for callers, which
`--callers NAME` prints for the serial samples with NAME in their stack). On a shared VM a window also looks serial when the host
descheduled the other vCPU, so read the functions, not only the share.
"""
import argparse
import collections
import re

IDLE = ("keep_awake", "find_work", "Sleep::sleep", "steal", "sched_yield", "schedule",
        "finish_task_switch", "_raw_spin_unlock", "wait_until", "futex", "LockLatch",
        "WorkerThread::wait", "crossbeam_epoch", "rayon_core::sleep", "rayon_core::registry")


def samples(path):
    """(tid, time, [frames, innermost first]) per sample of `perf script -F tid,time,ip,sym`."""
    cur = None
    for line in open(path):
        if not line.strip():
            if cur and cur[2]:
                yield cur
            cur = None
            continue
        m = re.match(r"\s*(\d+)\s+([\d.]+):", line)
        if m and not line.startswith("\t"):
            if cur and cur[2]:
                yield cur
            cur = (int(m.group(1)), float(m.group(2)), [])
            rest = line[m.end():].split(None, 1)
            if len(rest) == 2:
                # Recorded without call graphs: `ip sym` on the sample's own line.
                cur[2].append(rest[1].strip())
        elif cur is not None:
            parts = line.strip().split(None, 1)
            cur[2].append(parts[1] if len(parts) > 1 else "?")
    if cur and cur[2]:
        yield cur


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("script", help="output of `perf script -F tid,time,ip,sym`")
    ap.add_argument("--window", type=float, default=0.002, help="window length, seconds")
    ap.add_argument("--skip", type=float, default=0.3, help="fraction of the run to skip (set-up)")
    ap.add_argument("--busy", type=int, default=3, help="samples that make a thread busy in a window")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--callers", help="print the callers of the serial samples of this function")
    a = ap.parse_args()

    all_samples = list(samples(a.script))
    t0, t1 = min(s[1] for s in all_samples), max(s[1] for s in all_samples)
    cut = t0 + a.skip * (t1 - t0)
    kept = [s for s in all_samples if s[1] >= cut]
    idle = lambda st: any(k in st[0] for k in IDLE)
    window = lambda t: int((t - cut) / a.window)
    work = collections.defaultdict(collections.Counter)
    seen = set()
    for tid, t, st in kept:
        seen.add(window(t))
        if not idle(st):
            work[window(t)][tid] += 1
    busy = {w: [tid for tid, n in work[w].items() if n >= a.busy] for w in seen}
    by_count = collections.Counter(len(b) for b in busy.values())
    print(f"windows of {a.window * 1e3:g} ms by busy threads: {dict(sorted(by_count.items()))}"
          f" ({by_count[1] / max(1, len(seen)) * 100:.1f}% with one)")
    serial = [s for s in kept if len(busy[window(s[1])]) == 1 and not idle(s[2])]
    print(f"samples in those windows: {len(serial)} of {len(kept)}")
    tops = collections.Counter(s[2][0][:110] for s in serial)
    for name, n in tops.most_common(a.top):
        print(f"{n / max(1, len(serial)) * 100:5.1f}%  {name}")
    if a.callers:
        callers = collections.Counter()
        for _, _, st in serial:
            at = next((i for i, f in enumerate(st) if a.callers in f), None)
            if at is not None:
                frames = [f for f in st[at + 1:] if ("yolo" in f or "burn" in f) and "closure" not in f]
                callers[" < ".join(f[:80] for f in frames[:3])] += 1
        print(f"callers of {a.callers}:")
        for name, n in callers.most_common(10):
            print(f"  {n}  {name}")


if __name__ == "__main__":
    main()
