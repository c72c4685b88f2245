#!/usr/bin/env python3
"""river's Half-Space Trees on the stream of Fabrik's detector bench, for the comparison in
docs/benchmarks.md: the same 5-minute daily cycle with xorshift64* noise, drift and spikes
(`crates/fabrik-ml/benches/detectors.rs`, `stream`), min-max scaled online the way Fabrik's
`ScaledHalfSpaceTrees` does it (score with the range seen so far, then widen it, then learn),
river's default trees (10 trees, height 8, seed 42) with a 750-sample window.

Prints samples/s (best of three after a warm-up on the first 10,000 samples) and the sum of
the scores, which the Rust bench prints too (FABRIK_BENCH_CHECKSUM=1) so the two can be seen
doing the same work.

usage: river_hst.py [SAMPLES]        (default 1000000; needs `pip install river==0.26.*`)
"""
import math
import sys
import time

from river import anomaly

MASK = (1 << 64) - 1
FIVE_MINUTES_NS = 300 * 1_000_000_000


def stream(length):
    state = 0x9E3779B97F4A7C15
    values = []
    for i in range(length):
        state ^= state >> 12
        state ^= (state << 25) & MASK
        state ^= state >> 27
        bits = ((state * 0x2545F4914F6CDD1D) & MASK) >> 11
        noise = bits / float(1 << 53) - 0.5
        day = (i % 288) / 288.0 * math.tau
        spike = 40.0 if i % 4999 == 4998 else 0.0
        values.append(50.0 + 20.0 * math.sin(day) + 3.0 * noise + i * 1e-5 + spike)
    return values


def run(values):
    trees = anomaly.HalfSpaceTrees(n_trees=10, height=8, window_size=750, seed=42)
    low, high = math.inf, -math.inf
    total = 0.0
    started = time.perf_counter()
    for value in values:
        scaled = (value - low) / (high - low) if high > low else 0.5
        total += trees.score_one({"x": scaled})
        low, high = min(low, value), max(high, value)
        scaled = (value - low) / (high - low) if high > low else 0.5
        trees.learn_one({"x": scaled})
    return time.perf_counter() - started, total


def main():
    length = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    values = stream(length)
    run(values[:10_000])
    best, total = min(run(values) for _ in range(3))
    print(f"river {__import__('river').__version__} HalfSpaceTrees: {length} samples in "
          f"{best * 1e3:.1f} ms, {length / best:,.0f} samples/s; score sum {total:.9f}")


if __name__ == "__main__":
    main()
