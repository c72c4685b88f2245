"""scikit-learn's IsolationForest on the rows `cargo bench -p fabrik-ml --bench detectors`
scores with Fabrik's built-in forest: same generator, same 400 training rows, 200,000 rows
x 8 channels, 100 trees, max_samples 256, one thread.

    python3 -m venv /tmp/skl && /tmp/skl/bin/pip install scikit-learn numpy
    /tmp/skl/bin/python crates/fabrik-ml/bench/sklearn_iforest.py

Prints batched throughput (score_samples over all rows, best of three) and the per-row rate
when rows arrive one at a time, as a streaming detector sees them.
"""

import math
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from sklearn.ensemble import IsolationForest  # noqa: E402

ROWS = 200_000
TRAINING_ROWS = 400
MASK = (1 << 64) - 1


class Noise:
    """xorshift64*, as in benches/detectors.rs."""

    def __init__(self, seed):
        self.state = seed

    def next_unit(self):
        s = self.state
        s ^= s >> 12
        s ^= (s << 25) & MASK
        s ^= s >> 27
        self.state = s
        bits = ((s * 0x2545F4914F6CDD1D) & MASK) >> 11
        return bits / float(1 << 53) - 0.5


def rows(length):
    noise = Noise(0x0123456789ABCDEF)
    out = np.empty((length, 8))
    for i in range(length):
        slow = math.sin(i * 0.01)
        for channel in range(8):
            spike = 10.0 if (i % 997 == 996 and channel == 3) else 0.0
            out[i, channel] = 10.0 * channel + slow * (channel + 1.0) + noise.next_unit() + spike
    return out


def main():
    table = rows(ROWS + TRAINING_ROWS)
    training, test = table[:TRAINING_ROWS], table[TRAINING_ROWS:]
    forest = IsolationForest(n_estimators=100, max_samples=256, random_state=42, n_jobs=1)
    forest.fit(training)
    forest.score_samples(test[:1000])  # warm-up
    best = min(
        (lambda started: (forest.score_samples(test), time.perf_counter() - started)[1])(
            time.perf_counter()
        )
        for _ in range(3)
    )
    print(f"sklearn IsolationForest batched: {ROWS / best:,.0f} rows/s ({best * 1e3:.1f} ms)")
    single = 2_000
    started = time.perf_counter()
    for i in range(single):
        forest.score_samples(test[i : i + 1])
    elapsed = time.perf_counter() - started
    print(
        f"sklearn IsolationForest one row at a time: {single / elapsed:,.0f} rows/s "
        f"({elapsed / single * 1e6:.0f} us per row)"
    )


if __name__ == "__main__":
    main()
