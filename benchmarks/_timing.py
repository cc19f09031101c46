"""Shared helpers: interleaved timing, so both sides see the same machine noise."""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def interleaved(runs: dict, rounds: int) -> dict:
    """Calls each of `runs` (name -> no-argument callable) once per round, in turn;
    returns name -> list of wall times in seconds."""
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def report(times: dict, baseline: str, unit: float = 1.0, label: str = "s") -> None:
    """Prints the median of each and its ratio to `baseline`."""
    base = statistics.median(times[baseline])
    width = max(len(name) for name in times)
    for name, values in times.items():
        median = statistics.median(values)
        spread = (max(values) - min(values)) / unit
        print(
            f"  {name:<{width}}  median {median / unit:8.3f} {label} "
            f"(range {spread:.3f}, n={len(values)})  ratio to {baseline}: {median / base:.3f}"
        )
