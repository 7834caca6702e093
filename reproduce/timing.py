"""The timing helpers of the benchmarks (reproduce/bench_*.py): one definition each."""
import time

import torch


def sync(device: torch.device):
    """Wait for the device's queued work (CUDA runs asynchronously; the CPU needs nothing)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn, n: int, warmup: int, device: torch.device) -> float:
    """Seconds per call of fn(), over n timed calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return (time.perf_counter() - start) / n
