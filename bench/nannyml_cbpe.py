#!/usr/bin/env python3
"""NannyML's CBPE on its car-loan data, for the comparison with `cargo bench -p fabrik-ml
--bench drift -- cbpe` in docs/benchmarks.md: fitted on the 50,000 reference rows, then the
five metrics (roc_auc, f1, accuracy, precision, recall) estimated on the 50,000 analysis rows
in chunks of 5,000; best of five after a warm-up, the data already in memory.

usage: nannyml_cbpe.py        (needs `pip install nannyml==0.13.1 statsmodels`)
"""
import os
import time
import warnings

# NannyML reports usage to an analytics service unless told not to (and this machine has no
# network: the attempts would be timed too).
os.environ["NML_DISABLE_USAGE_LOGGING"] = "1"

import nannyml as nml

warnings.filterwarnings("ignore")


def main():
    reference, analysis, _ = nml.load_synthetic_car_loan_dataset()
    best = float("inf")
    alerts = 0
    for _ in range(6):
        started = time.perf_counter()
        estimator = nml.CBPE(
            y_pred_proba="y_pred_proba",
            y_pred="y_pred",
            y_true="repaid",
            metrics=["roc_auc", "f1", "accuracy", "precision", "recall"],
            chunk_size=5000,
            problem_type="classification_binary",
        )
        estimator.fit(reference)
        result = estimator.estimate(analysis).to_df()
        best = min(best, time.perf_counter() - started)
        alerts = sum(
            int(result[(m, "alert")].sum())
            for m in ["roc_auc", "f1", "accuracy", "precision", "recall"]
        )
    print(f"NannyML {nml.__version__} CBPE fit + estimate: {best * 1e3:.1f} ms ({alerts} alerts)")


if __name__ == "__main__":
    main()
