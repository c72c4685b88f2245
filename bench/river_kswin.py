#!/usr/bin/env python3
"""river's KSWIN on the stream of Fabrik's drift bench, for the comparison in
docs/benchmarks.md: the values of `river_adwin.py` (uniform noise in [-0.5, 0.5) on a level
that steps by +1 and -1 alternately every 100,000 values), river's default KSWIN (alpha 0.005,
window 100, stat_size 30) with seed 42, reset after each drift as river does.

Prints values/s (best of three) and the detections, which `cargo bench -p fabrik-ml --bench
drift -- kswin` prints too: with the same seed they must be the same indices.

usage: river_kswin.py [VALUES]        (default 1000000; needs `pip install river==0.26.*`)
"""
import sys

from river import drift

from river_adwin import stream, timed


def main():
    length = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    timed("river KSWIN", lambda: drift.KSWIN(seed=42), stream(length))


if __name__ == "__main__":
    main()
