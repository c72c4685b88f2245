"""Level and power of the sequential decisions of decision 0035, by simulation: the shadow
comparison's mixture SPRT, then a precision gate's SPRT beside `at_least` + `evidence_at_least`.

The arithmetic of `fabrik_ml::sequential::MixtureSprt` with `Pairing::Paired` and difference
bounds [-1, 1], tau2 0.01, alpha 0.05. Per labelled window the challenger alone is right with
probability a, the champion alone with b; the test is read after every window, 2,000 windows
a stream. Prints how many streams decided and, where they did, the median window.

    python3 tools/sequential_level.py
"""

import math
import random


def decide(differences, tau2=0.01, alpha=0.05, low=-1.0, high=1.0):
    total = squares = 0.0
    p = 1.0
    for n, d in enumerate(differences, 1):
        total += d
        squares += d * d
        if n < 2:
            continue
        s, q, m = total + low + high, squares + low * low + high * high, n + 2
        variance = (q - s * s / m) / (m - 1)
        theta = total / n
        spread = variance + n * tau2
        ratio = math.sqrt(variance / spread) * math.exp(
            n * n * tau2 * theta * theta / (2 * variance * spread)
        )
        p = min(p, 1 / ratio)
        if p <= alpha:
            return n, theta
    return None, None


def streams(a, b, count, seed, length=2000):
    decided = []
    for i in range(count):
        rng = random.Random(seed + i)
        differences = []
        for _ in range(length):
            u = rng.random()
            differences.append(1 if u < a else (-1 if u < a + b else 0))
        decided.append(decide(differences))
    return decided


def main():
    print("twenty of twenty for the challenger decides at window", decide([1] * 20)[0])
    for a in (0.2, 0.4, 0.02):
        wrong = sum(1 for n, _ in streams(a, a, 1000, 10000) if n)
        print(f"no difference, a = b = {a}: {wrong} of 1000 streams decided")
    for a, b in ((0.3, 0.0), (0.3, 0.05), (0.2, 0.05), (0.1, 0.0)):
        results = streams(a, b, 200, 0)
        stops = sorted(n for n, theta in results if n and theta > 0)
        median = stops[len(stops) // 2] if stops else None
        print(f"a = {a}, b = {b}: {len(stops)} of 200 decided for the challenger, median window {median}")


def sprt_gate(labels, good, bad, alpha=0.05, beta=0.2):
    """A precision gate's SPRT (fabrik_registry::usecases): True/False once decided."""
    upper, lower = math.log((1 - beta) / alpha), math.log(beta / (1 - alpha))
    llr = 0.0
    for n, confirmed in enumerate(labels, 1):
        llr += math.log(good / bad) if confirmed else math.log((1 - good) / (1 - bad))
        if llr >= upper:
            return True, n
        if llr <= lower:
            return False, n
    return None, len(labels)


def point_gate(labels, at_least=0.8, evidence=20):
    """`at_least` with `evidence_at_least`, judged after every label."""
    confirmed = 0
    for n, label in enumerate(labels, 1):
        confirmed += label
        if n >= evidence and confirmed / n >= at_least:
            return True, n
    return None, len(labels)


def gates():
    print("\nprecision gates over 200 labels, 4,000 runs per true precision:")
    for precision in (0.5, 0.6, 0.7, 0.8, 0.9):
        rows = []
        for name, gate in (
            ("sprt 0.8 vs 0.6", lambda xs: sprt_gate(xs, 0.8, 0.6)),
            ("at_least 0.8 + 20 labels", point_gate),
        ):
            passed, failed = [], 0
            for seed in range(4000):
                rng = random.Random(seed)
                verdict, n = gate([rng.random() < precision for _ in range(200)])
                if verdict:
                    passed.append(n)
                failed += verdict is False
            median = sorted(passed)[len(passed) // 2] if passed else None
            rows.append(
                f"{name}: passes {len(passed) / 4000:.3f} (median label {median}), "
                f"decided failed {failed / 4000:.3f}"
            )
        print(f"precision {precision}: " + "; ".join(rows))


if __name__ == "__main__":
    main()
    gates()
