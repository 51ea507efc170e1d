#!/usr/bin/env python3
"""Best-of-N: try N candidate fixes in parallel branches of one checkpoint, score each by a
test's exit code, keep the best.

The "repository" is a shell function with a bug and a test script whose exit code is the number
of failing cases (0 = all pass). Every candidate is written into its own branch of the same
checkpoint and tested there; the branch with the lowest exit code (then the fastest) wins and is
tagged. Nothing is copied: each branch is a new image that shares the checkpoint's layers.

usage: best_of_n.py [--url URL] [--token TOKEN] [--image busybox:latest] [-n N]
                    [--parallel P] [--tag best-of-n:winner]
       (URL and token default to COPPICE_URL / COPPICE_TOKEN, then the CLI profile)
"""
from __future__ import annotations

import argparse
import sys
import time

from coppice import CoppiceSync, Image, UploadFileSpec, fan_out

TEST = b"""#!/bin/sh
# Runs /repo/add.sh on a few cases; the exit code is the number of wrong answers.
fails=0
for case in "1 2 3" "0 0 0" "20 22 42" "7 -3 4" "100 1 101"; do
  set -- $case
  got=$(/repo/add.sh "$1" "$2" 2>/dev/null)
  if [ "$got" != "$3" ]; then fails=$((fails + 1)); echo "add $1 $2: want $3, got '$got'"; fi
done
exit $fails
"""

BUGGY = b"#!/bin/sh\necho $(($1 - $2))\n"

# Candidate patches, as a model might propose them (some right, some wrong, one slow).
CANDIDATES = [
    "echo $(($1 * $2))",
    "echo $1$2",
    "sleep 0.05; echo $(($1 + $2))",
    "echo $(($1 + $2))",
    "expr $1 + $2",
    "echo 42",
    "echo $(($2 - $1))",
    "echo $(( $1 + $2 + 0 ))",
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url")
    ap.add_argument("--token")
    ap.add_argument("--image", default="busybox:latest")
    ap.add_argument("-n", type=int, default=len(CANDIDATES), help="candidates to try")
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--tag", default="best-of-n:winner")
    a = ap.parse_args(argv)

    with CoppiceSync(base_url=a.url, token=a.token) as client:
        base = client.images.use(a.image)
        # 1. The checkpoint: the buggy code and its test (uploaded once, by content).
        repo = base.run(shell="/repo/test.sh", disposable=False, files={
            "/repo/add.sh": UploadFileSpec(BUGGY, mode=0o755),
            "/repo/test.sh": UploadFileSpec(TEST, mode=0o755)}).wait()
        print(f"checkpoint {repo.uuid}: the test fails {repo.exit_code} case(s)")

        # 2. N branches: write a candidate, run the test. Each branch keeps its image.
        patches = [CANDIDATES[i % len(CANDIDATES)] for i in range(a.n)]
        started = time.monotonic()
        results: list[Image] = fan_out(repo, [
            {"command": "/repo/test.sh",
             "files": {"/repo/add.sh": UploadFileSpec(f"#!/bin/sh\n{p}\n".encode(),
                                                      mode=0o755)}}
            for p in patches], max_parallel=a.parallel, disposable=False, timeout=30)
        print(f"{len(results)} branches tested in {time.monotonic() - started:.2f} s")

        # 3. Score: fewer failing cases first, then less time.
        ranked = sorted(range(len(results)), key=lambda i: (results[i].exit_code,
                                                            results[i].result.elapsed_time
                                                            if results[i].result else 0.0))
        for i in ranked:
            r = results[i]
            print(f"  #{i}: {r.exit_code} failing, {r.result.elapsed_time * 1000:6.1f} ms  "
                  f"{patches[i]!r}" if r.result else f"  #{i}: ?")
        best = results[ranked[0]]
        if best.exit_code != 0:
            print("no candidate passes the test")
            return 1
        winner = best.tag_as(a.tag)
        print(f"best: #{ranked[0]} {patches[ranked[0]]!r} -> image {winner.uuid} "
              f"tagged {winner.tag}")
        # 4. The winner's code, read from its image without running anything.
        print(winner.read_text("/repo/add.sh").strip().splitlines()[-1])
        return 0


if __name__ == "__main__":
    sys.exit(main())
