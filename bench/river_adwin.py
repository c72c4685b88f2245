#!/usr/bin/env python3
"""river's ADWIN on the stream of Fabrik's drift bench, for the comparison in
docs/benchmarks.md: 1,000,000 values, uniform noise in [-0.5, 0.5) from xorshift64 (13, 7, 17)
on a level that steps by +1 and -1 alternately every 100,000 values
(`crates/fabrik-ml/benches/drift.rs`, `adwin_stream`); river's default ADWIN (delta 0.002,
clock 32), reset after each drift as river does.

Prints values/s (best of three) and the detections, which the Rust bench prints too, so the
two can be seen doing the same work.

usage: river_adwin.py [VALUES]        (default 1000000; needs `pip install river==0.26.*`)
"""
import sys
import time

from river import drift

MASK = (1 << 64) - 1


def stream(length):
    state = 0x9E3779B97F4A7C15
    values = []
    for i in range(length):
        state ^= (state << 13) & MASK
        state ^= state >> 7
        state ^= (state << 17) & MASK
        noise = (state >> 11) / float(1 << 53) - 0.5
        level = (i // 100_000) % 2
        values.append(level + noise)
    return values


def main():
    length = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    timed("river ADWIN", drift.ADWIN, stream(length))


def timed(name, make, values):
    """Runs a fresh detector from `make` over `values` three times; prints the best rate and
    the detections (indices where `drift_detected` was set)."""
    best = None
    detections = []
    for _ in range(3):
        detector = make()
        found = []
        started = time.perf_counter()
        for i, value in enumerate(values):
            detector.update(value)
            if detector.drift_detected:
                found.append(i)
        elapsed = time.perf_counter() - started
        best = elapsed if best is None else min(best, elapsed)
        detections = found
    print(f"{name}: {len(values) / best:,.0f} values/s")
    print(f"detections: {len(detections)} {detections[:12]}")


if __name__ == "__main__":
    main()
