#!/usr/bin/env python3
"""Times a shell command N times (bench/peers.sh uses it).

  timer.py KEY LABEL N TIMEOUT_S [--parallel K] [--reps R] -- SHELL_COMMAND

Sequential mode runs `bash -c SHELL_COMMAND` N times (after one untimed warm-up) and prints
p50/p99/mean of each run. `{i}` in the command is replaced by the iteration number.
Parallel mode (--parallel K) starts K copies at once (`{i}` = branch number, `{rep}` = repetition),
R times, and reports the median of the total wall time until all K finished, plus the p99 of the
per-branch latencies. Each command gets TIMEOUT_S seconds; the first failure is printed with its
output and the exit status is 1. Prints a machine-readable `RESULT KEY_p50 X` line (and _p99).
"""
import math
import statistics
import subprocess
import sys
import threading
import time


def pct(values, p):
    v = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(v)))
    return v[min(rank, len(v)) - 1]


def fail(label, cmd, proc_or_exc):
    if isinstance(proc_or_exc, subprocess.TimeoutExpired):
        msg = f"timed out after {proc_or_exc.timeout} s"
        out = (proc_or_exc.stdout or b"") + (proc_or_exc.stderr or b"")
    else:
        msg = f"exit status {proc_or_exc.returncode}"
        out = (proc_or_exc.stdout or b"") + (proc_or_exc.stderr or b"")
    text = out.decode(errors="replace").strip().splitlines()[-8:]
    print(f"  {label:<50} FAILED: {msg}: {cmd}")
    for line in text:
        print(f"      | {line}")
    sys.exit(1)


def run_once(cmd, timeout):
    t0 = time.perf_counter()
    p = subprocess.run(["bash", "-c", cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout)
    return (time.perf_counter() - t0) * 1000, p


def main():
    args = sys.argv[1:]
    sep = args.index("--")
    opts, cmd = args[:sep], " ".join(args[sep + 1:])
    key, label, n, timeout = opts[0], opts[1], int(opts[2]), float(opts[3])
    parallel, reps = 0, 5
    rest = opts[4:]
    while rest:
        if rest[0] == "--parallel":
            parallel = int(rest[1])
        elif rest[0] == "--reps":
            reps = int(rest[1])
        rest = rest[2:]

    if not parallel:
        lat = []
        for i in range(-1, n):  # iteration -1 is the warm-up
            c = cmd.replace("{i}", str(i + 1))
            try:
                ms, p = run_once(c, timeout)
            except subprocess.TimeoutExpired as e:
                fail(label, c, e)
            if p.returncode != 0:
                fail(label, c, p)
            if i >= 0:
                lat.append(ms)
        p50, p99, mean = pct(lat, 50), pct(lat, 99), statistics.mean(lat)
        print(f"  {label:<50} n={n:<4} p50={p50:8.2f} ms  p99={p99:8.2f} ms  mean={mean:8.2f} ms")
        print(f"RESULT {key}_p50 {p50:.3f}")
        print(f"RESULT {key}_p99 {p99:.3f}")
        return

    totals, per = [], []
    for rep in range(-1, reps):  # rep -1 is the warm-up
        procs = []
        t0 = time.perf_counter()
        for i in range(parallel):
            c = cmd.replace("{i}", str(i)).replace("{rep}", str(rep + 1))
            procs.append((c, subprocess.Popen(["bash", "-c", c], stdout=subprocess.PIPE,
                                              stderr=subprocess.PIPE)))
        results = [None] * len(procs)

        def waiter(k):
            c, p = procs[k]
            try:
                out, err = p.communicate(timeout=timeout)
                results[k] = ((time.perf_counter() - t0) * 1000, out, err, None)
            except subprocess.TimeoutExpired as e:
                p.kill()
                p.communicate()
                results[k] = (0, b"", b"", e)

        threads = [threading.Thread(target=waiter, args=(k,)) for k in range(len(procs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ends = []
        for (c, p), (ms, out, err, exc) in zip(procs, results):
            if exc is not None:
                fail(label, c, exc)
            if p.returncode != 0:
                p.stdout, p.stderr = out, err
                fail(label, c, p)
            ends.append(ms)
        total = (time.perf_counter() - t0) * 1000
        if rep >= 0:
            totals.append(total)
            per.extend(ends)
    med, p99 = statistics.median(totals), pct(per, 99)
    print(f"  {label:<50} reps={reps} median total={med:8.2f} ms  "
          f"(min {min(totals):.2f}, max {max(totals):.2f})  per-branch p99={p99:8.2f} ms")
    print(f"RESULT {key}_p50 {med:.3f}")
    print(f"RESULT {key}_p99 {p99:.3f}")


if __name__ == "__main__":
    main()
