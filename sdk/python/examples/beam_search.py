#!/usr/bin/env python3
"""Beam search over sandbox states: expand every state of the beam with each possible next step,
score each child by a test's exit code, keep the best few, repeat.

The task: build the secret word in /guess one letter at a time. A test in the image scores a
guess by its exit code (the number of wrong or missing letters; 0 = solved). The search never
sees the secret, only exit codes. Every step is a non-disposable run, so each child is a new
image that branches from its parent; the losers are simply dropped.

usage: beam_search.py [--url URL] [--token TOKEN] [--image busybox:latest] [--secret dab]
                      [--alphabet abcd] [--beam 2]
"""
from __future__ import annotations

import argparse
import sys

from coppice import CoppiceSync, Image, UploadFileSpec

SCORE = """#!/bin/sh
# exit code = letters of /guess that differ from the secret + letters still missing
secret={secret}
guess=$(cat /guess 2>/dev/null)
bad=0
i=1
while [ $i -le ${{#secret}} ]; do
  s=$(echo "$secret" | cut -c$i)
  g=$(echo "$guess" | cut -c$i)
  [ "$s" = "$g" ] || bad=$((bad + 1))
  i=$((i + 1))
done
[ ${{#guess}} -gt ${{#secret}} ] && bad=$((bad + ${{#guess}} - ${{#secret}}))
exit $bad
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url")
    ap.add_argument("--token")
    ap.add_argument("--image", default="busybox:latest")
    ap.add_argument("--secret", default="dab")
    ap.add_argument("--alphabet", default="abcd")
    ap.add_argument("--beam", type=int, default=2)
    a = ap.parse_args(argv)

    with CoppiceSync(base_url=a.url, token=a.token) as client:
        # The root state: an empty guess and the scorer (which holds the secret).
        root = client.images.use(a.image).run(
            shell=": > /guess; /score.sh", disposable=False,
            files={"/score.sh": UploadFileSpec(SCORE.format(secret=a.secret).encode(),
                                               mode=0o755)}).wait()
        beam: list[tuple[int, str, Image]] = [(root.exit_code, "", root)]
        print(f"root {root.uuid}: score {root.exit_code}")
        runs = 0
        for depth in range(1, len(a.secret) + 2):
            # Expand: every state of the beam times every letter, all in parallel.
            # (image.run() submits at once; the server queues what exceeds its workers.)
            moves = [(state, prefix + ch, ch) for _, prefix, state in beam for ch in a.alphabet]
            ops = [state.run(shell=f"printf %s {ch} >> /guess; /score.sh", disposable=False)
                   for state, _, ch in moves]
            children = [op.wait() for op in ops]
            runs += len(moves)
            scored = sorted(((c.exit_code, m[1], c) for m, c in zip(moves, children)),
                            key=lambda t: (t[0], t[1]))
            beam = scored[:a.beam]
            print(f"depth {depth}: {len(moves)} children, kept " +
                  ", ".join(f"{p!r} (score {s})" for s, p, _ in beam))
            if beam[0][0] == 0:
                score, word, image = beam[0]
                print(f"solved: {word!r} after {runs} runs -> image {image.uuid} "
                      f"({image.read_text('/guess')!r} in /guess)")
                return 0
        print("not solved")
        return 1


if __name__ == "__main__":
    sys.exit(main())
