"""machine.py: what the machine running train.py or sample.py offers: its peak FLOP/s (for MFU), the
CPU cores other processes leave free (torch's thread count) and the CPU's instruction-set flags (which
of run.c's kernels a -march=native build gets: the benchmarks and tests ask).
"""
import os
import time

import torch


def cpu_flags():
    """The CPU's feature flags as Linux lists them (/proc/cpuinfo), e.g. avx512vbmi; empty elsewhere."""
    try:
        return set(next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split(":")[1].split())
    except (OSError, StopIteration):
        return set()


# -----------------------------------------------------------------------------
# peak FLOP/s, the denominator of MFU

# Dense bf16/fp16 tensor-core peaks in TFLOP/s (vendor datasheets, no sparsity), matched by substring
# of torch.cuda.get_device_name(); more specific names first. fp32 training runs on TF32 tensor cores
# (train.py allows TF32), whose dense peak is half of these on Ampere and Hopper.
GPU_PEAK_TFLOPS = [("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0),
                   ("L40S", 362.0), ("L4", 121.0), ("RTX 4090", 165.0), ("RTX 3090", 71.0)]


def measured_peak_flops(device="cpu", dtype=torch.float32, n=None, seconds=0.3):
    """The best square-matmul FLOP/s reached in about `seconds` on device: a practical peak for MFU."""
    n = n or (4096 if str(device).startswith("cuda") else 1024)  # big enough to fill the device
    # constant operands: matmul speed does not depend on the values, and the RNG stays untouched
    a = torch.full((n, n), 0.5, device=device, dtype=dtype)
    b = torch.full((n, n), 0.25, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    best, t_end = 0.0, time.perf_counter() + seconds
    while True:
        sync()
        t0 = time.perf_counter()
        a @ b
        sync()
        t1 = time.perf_counter()
        best = max(best, 2 * n ** 3 / (t1 - t0))
        if t1 > t_end:
            return best


def peak_flops(device, dtype):
    """Peak FLOP/s of `device` for training in `dtype`: a datasheet table for known GPUs, else measured.

    A CPU has no trustworthy datasheet number (clocks and vector units vary, and a VM hides both),
    so CPU MFU is measured against the best fp32/bf16 matmul this process reaches.
    """
    device = str(device)
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
        for key, tflops in GPU_PEAK_TFLOPS:
            if key in name:
                return tflops * 1e12 / (2 if dtype == torch.float32 else 1)
    return measured_peak_flops(device, dtype)


# -----------------------------------------------------------------------------
# CPU threads beside other work
#
# torch's threads meet at a barrier after every op; when another process holds one of the cores,
# the thread sharing it waits a scheduler time slice at each barrier, and two threads end up far
# slower than one. So on a CPU train.py and sample.py use only the cores that are free.

def cpu_reading():
    """(busy jiffies of the whole machine, this process's CPU seconds, wall seconds), or None.

    Time spent by niced processes is not busy (unless this process is niced too): the scheduler
    gives a nice 19 job a sliver beside ours, so a core it runs on is a core we can have."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, idle, iowait, irq, softirq, steal = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None  # not Linux (or a /proc/stat of another shape): no reading, torch's own default stands
    busy = user + system + irq + softirq + steal + (nice if os.getpriority(os.PRIO_PROCESS, 0) > 0 else 0)
    own = os.times()
    return busy, own.user + own.system, time.monotonic()


def others_busy(prev):
    """(cores' worth of CPU the other processes used since the reading prev, the new reading); None
    for the first where there is no reading or no time has passed."""
    now = cpu_reading()
    if prev is None or now is None or now[2] <= prev[2]:
        return None, now
    hz = os.sysconf("SC_CLK_TCK")
    return max(((now[0] - prev[0]) / hz - (now[1] - prev[1])) / (now[2] - prev[2]), 0.0), now


def free_cores(prev=None, wait=0.2):
    """(cores not busy with other processes since the reading prev, the new reading).

    Without prev it samples for `wait` seconds. This process's own CPU time is not counted as busy,
    so a running job measures what the others use. Returns (None, None) where /proc/stat is missing.
    """
    if prev is None:
        prev = cpu_reading()
        if prev is None:
            return None, None
        time.sleep(wait)
    others, now = others_busy(prev)
    if others is None:
        return None, now
    n = len(os.sched_getaffinity(0))
    return max(1, min(n, n - round(others))), now


def use_free_cores(prev=None):
    """Set torch's thread count to the free cores (unless OMP_NUM_THREADS is set); returns the
    reading to pass back next time, so a long run can follow the machine's load."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    n, reading = free_cores(prev)
    if n is not None and n != torch.get_num_threads():
        torch.set_num_threads(n)
    return reading
