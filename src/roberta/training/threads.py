"""train.threads=0 (automatic): a CPU run takes the cores no other process is using right now.

On a machine whose cores other processes keep busy, OpenMP's threads wait at every op's barrier
for a peer the kernel has descheduled: a run at two threads on two vCPUs fell to a third of its
speed when another job started. So the run counts what the others use -- measured from /proc over
a window, not the load average, which lags by minutes (the quickstart chose one thread on an idle
machine right after `make test`) -- and takes the cores they leave, at least one.

The count is chosen once, at the start, and a --resume reuses it (TrainState.threads): torch's CPU
LayerNorm backward sums its weight and bias gradients one chunk per thread, so one and two threads
give weights that differ in the last bits after a step (tests/test_threads.py), and a resumed run
must retrace the uninterrupted one bit for bit. While training, `Threads.check` measures again at a
step boundary every CHECK_EVERY_S and says once, with the fix, when another count would suit the
machine better.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

PROC_STAT = "/proc/stat"
PROC_SELF_STAT = "/proc/self/stat"
PROC_SELF_CGROUP = "/proc/self/cgroup"
CGROUP_ROOT = "/sys/fs/cgroup"
MIN_WINDOW_S = 0.3  # the shortest measurement: /proc counts in 10 ms ticks
CHECK_EVERY_S = 30.0  # between two measurements while training


@dataclass(frozen=True)
class Counters:
    """One reading: CPU-seconds since boot, everyone's on the CPUs we may use, and ours."""
    wall: float  # time.monotonic()
    busy: float
    ours: float


def others_cores(a: Counters, b: Counters) -> float:
    """Cores other processes kept busy between two readings, on average."""
    return max(0.0, (b.busy - a.busy) - (b.ours - a.ours)) / max(b.wall - a.wall, 1e-6)


def threads_for(cores: float, others: float) -> int:
    """A core counts as free when the others leave more than half of it (an idle machine reads a
    few hundredths busy, from daemons and the measurement itself)."""
    return max(1, math.floor(cores - others + 0.5))


def _ticks() -> int:
    return os.sysconf("SC_CLK_TCK")  # the unit of /proc/stat and /proc/<pid>/stat (USER_HZ)


def _cpus_busy(cpus: set[int] | None) -> float:
    """/proc/stat: user nice system idle iowait irq softirq steal (guest is inside user) per CPU.
    Steal counts as busy: a vCPU the hypervisor gave away is a descheduled peer just the same."""
    busy = 0
    for line in Path(PROC_STAT).read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name != "cpu" and (cpus is None or int(name[3:]) in cpus):
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
            busy += user + nice + system + irq + softirq + steal
    return busy / _ticks()


def _own_seconds() -> float:
    """utime + stime of this process, all its threads (fields 14 and 15 of /proc/self/stat; the
    command name before them may hold spaces, so count from its closing parenthesis)."""
    fields = Path(PROC_SELF_STAT).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _ticks()


def _quota_cgroup() -> tuple[Path, float] | None:
    """This process's cgroup (v2) and its CPU quota in cores, when it has one (a container's
    --cpus). v1 and a quota set on an ancestor are not looked for: the CPU count stands there."""
    try:
        lines = Path(PROC_SELF_CGROUP).read_text().splitlines()
        path = next(line[3:] for line in lines if line.startswith("0::"))
        group = Path(CGROUP_ROOT) / path.strip().lstrip("/")
        quota, period = (group / "cpu.max").read_text().split()
        return None if quota == "max" else (group, int(quota) / int(period))
    except (OSError, StopIteration, ValueError):
        return None


def _cgroup_busy(group: Path) -> float:
    usage = next(line for line in (group / "cpu.stat").read_text().splitlines() if line.startswith("usage_usec"))
    return int(usage.split()[1]) / 1e6


class CpuMeter:
    """The cores this process may use (affinity, capped by a cgroup quota) and readings of how
    busy they are. Under a quota smaller than the CPUs, what competes is the cgroup's own other
    processes, so its usage is read instead of the host-wide /proc/stat."""

    def __init__(self, cpus: set[int] | None = None):
        if cpus is None and hasattr(os, "sched_getaffinity"):  # Linux: the CPUs this process may run on
            cpus = os.sched_getaffinity(0)
        self.cpus = cpus
        n = len(self.cpus) if self.cpus else os.cpu_count() or 1
        quota = _quota_cgroup()
        self.group = quota[0] if quota and quota[1] < n else None
        self.cores = min(n, quota[1]) if quota else n

    def read(self) -> Counters | None:
        """None where there is no /proc (macOS, Windows): the run keeps torch's default there."""
        try:
            busy = _cgroup_busy(self.group) if self.group else _cpus_busy(self.cpus)
            return Counters(time.monotonic(), busy, _own_seconds())
        except (OSError, ValueError, StopIteration, IndexError):
            return None


def local_world() -> int:
    """Processes of this run on this machine (torchrun sets LOCAL_WORLD_SIZE)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE") or 1)


class Threads:
    """train.threads for one run: a fixed count is applied at once; 0 on a CPU is chosen by
    `start` (measured over the window since construction: the run's setup) and watched by `check`.
    On a GPU, 0 leaves torch's default: the host threads only prepare batches there."""

    def __init__(self, configured: int, device: torch.device, is_main: bool, meter: CpuMeter | None = None,
                 check_every: float | None = None):
        self.configured, self.is_main = configured, is_main
        self.check_every = CHECK_EVERY_S if check_every is None else check_every
        self.automatic = configured == 0 and torch.device(device).type == "cpu"
        self.meter = (meter or CpuMeter()) if self.automatic and local_world() == 1 else None
        self.last = self.meter.read() if self.meter else None  # opens the first window
        self.threads, self.warned = 0, False
        if configured:
            torch.set_num_threads(configured)

    def start(self, saved: int = 0) -> int:
        """Apply the run's count and say why (rank 0); saved: the count a resumed run started
        with (TrainState.threads; 0 for a fresh run). -> the count in use."""
        n, why = self._choose(saved)
        if n:
            torch.set_num_threads(n)
        self.threads = torch.get_num_threads()
        if why and self.is_main:
            print(f"threads: {self.threads} ({why})")
        return self.threads

    def _choose(self, saved: int) -> tuple[int, str]:
        if not self.automatic:
            return self.configured, ""
        if saved:
            return saved, "the count this run started with: a resumed run keeps it, so its sums round as before"
        if local_world() > 1:  # every rank's "others" would include the other ranks: share instead
            cores = CpuMeter().cores
            return max(1, int(cores // local_world())), f"{cores:g} cores shared by {local_world()} ranks here"
        others = self._measure(wait=True)
        if others is None:
            return 0, "torch's default: no /proc here to see what other processes use"
        n = threads_for(self.meter.cores, others)
        if others < 0.5:
            return n, f"{self.meter.cores:g} cores idle"
        return n, (f"other processes are using ~{others:.1f} of {self.meter.cores:g} cores; "
                   f"--set train.threads=N fixes the count")

    def _measure(self, wait: bool = False) -> float | None:
        """Cores the others used since the last reading (at least MIN_WINDOW_S when `wait`)."""
        if self.last is None:
            return None
        if wait:
            time.sleep(max(0.0, MIN_WINDOW_S - (time.monotonic() - self.last.wall)))
        now = self.meter.read()
        if now is None:
            return None
        others, self.last = others_cores(self.last, now), now
        return others

    def check(self, step: int, log) -> None:
        """At a step boundary (cheap: a clock read; two /proc reads every check_every seconds):
        once, when another count would suit what the others use now, say so with the fix. The
        count itself stays (see the module's doc)."""
        if self.last is None or self.warned or time.monotonic() - self.last.wall < self.check_every:
            return
        others = self._measure()
        if others is not None and threads_for(self.meter.cores, others) != self.threads:
            self.warned = True
            self._report(step, log, others, threads_for(self.meter.cores, others))

    def _report(self, step: int, log, others: float, suits: int) -> None:
        """A console line and an event in metrics.jsonl (written directly: an event, not a metric
        for the integrations)."""
        if log.enabled:
            with open(log.path, "a") as f:
                f.write(json.dumps({"step": step, "event": "threads", "threads": self.threads, "suits": suits,
                                    "cores": self.meter.cores, "others_cores": round(others, 2)}) + "\n")
        now = (f"this run's {self.threads} threads now wait on each other at every op (steps can run 3x slower)"
               if suits < self.threads else f"this run started at {self.threads} thread(s)")
        log.print(f"threads: other processes now use ~{others:.1f} of {self.meter.cores:g} cores: {now}; {suits} "
                  f"would suit the machine now: stop (Ctrl-C saves a checkpoint) and --resume with --set "
                  f"train.threads={suits}")
