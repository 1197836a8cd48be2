"""train.threads=0: the thread count measured from what other processes use (roberta.training.threads).

/proc is faked with files in tmp_path; the trainer's runs get a FakeMeter that reports a scripted
load. torch.set_num_threads is recorded, not applied, wherever a test does not train.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from roberta.config import apply_overrides
from roberta.presets import tiny
from roberta.training import threads as th
from roberta.training.loop import pretrain
from roberta.training.threads import Counters, CpuMeter, Threads, others_cores, threads_for

CPU = torch.device("cpu")
# A 2 x 64 model, a few steps (as tests/test_train.py), with train.threads left at its default.
SETS = ["model.layers=2", "model.hidden=64", "model.heads=2", "model.ffn=128", "train.batch_size=8",
        "train.max_steps=4", "train.eval_interval=1000", "train.checkpoint_interval=1000", "train.log_interval=1",
        "train.eval_sequences=16", "train.peak_flops=1e11", "train.precision=fp32"]


def run(data_dir, out, *sets, resume=False) -> dict:
    return pretrain(str(data_dir), str(out), apply_overrides(tiny(), SETS + list(sets)), resume=resume, progress=False)


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """A run sets the process's thread count: the next test starts from the one before."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- /proc, faked

def proc_stat(cpus: dict[int, tuple[int, ...]]) -> str:
    """/proc/stat with per-CPU jiffies: user nice system idle iowait irq softirq steal guest guest_nice."""
    total = [sum(col) for col in zip(*cpus.values())]
    lines = ["cpu  " + " ".join(map(str, total))]
    lines += [f"cpu{i} " + " ".join(map(str, v)) for i, v in cpus.items()]
    return "\n".join(lines + ["intr 1 2 3", "ctxt 99", "btime 1700000000", "processes 4242"]) + "\n"


def self_stat(utime: int, stime: int) -> str:
    """/proc/self/stat of a process whose name has a space and a parenthesis in it."""
    return f"4242 (python (x) y) R 1 4242 4242 0 -1 4194304 100 0 0 0 {utime} {stime} 0 0 20 0 3 0 7000 0 0\n"


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


@pytest.fixture
def fake_proc(tmp_path, monkeypatch):
    """Point the meter at files in tmp_path and its clock at a FakeClock. Returns write(cpus, ours)
    (jiffies at 100 per second) -> the meter's reading of them, one second after the last."""
    stat, self_, cgroup = tmp_path / "stat", tmp_path / "self_stat", tmp_path / "cgroup"
    monkeypatch.setattr(th, "PROC_STAT", str(stat))
    monkeypatch.setattr(th, "PROC_SELF_STAT", str(self_))
    monkeypatch.setattr(th, "PROC_SELF_CGROUP", str(cgroup))  # absent: no quota
    monkeypatch.setattr(th, "_ticks", lambda: 100)
    clock = FakeClock()
    monkeypatch.setattr(th, "time", clock)
    meter = CpuMeter(cpus={0, 1})

    def write(cpus: dict[int, tuple[int, ...]], ours: tuple[int, int]) -> Counters:
        stat.write_text(proc_stat(cpus))
        self_.write_text(self_stat(*ours))
        clock.sleep(1.0)
        return meter.read()

    write.meter = meter
    return write


# per CPU: user nice system idle iowait irq softirq steal guest guest_nice, in jiffies
START = {0: (500, 0, 100, 9000, 10, 0, 5, 0, 0, 0), 1: (400, 0, 90, 9100, 10, 0, 5, 0, 0, 0),
         2: (0, 0, 0, 9900, 0, 0, 0, 0, 0, 0)}  # cpu2 is outside this process's affinity {0, 1}


def advanced(cpu: int, user=0, idle=0, steal=0, base=START) -> dict:
    """START with one second of `cpu`'s jiffies spent as given."""
    v = list(base[cpu])
    v[0], v[3], v[7] = v[0] + user, v[3] + idle, v[7] + steal
    return {**base, cpu: tuple(v)}


def test_an_idle_machine_gives_every_core(fake_proc):
    a = fake_proc(START, (300, 50))
    idle = advanced(0, idle=100)
    b = fake_proc(advanced(1, idle=100, base=idle), (300, 50))
    assert fake_proc.meter.cores == 2
    assert others_cores(a, b) == 0.0 and threads_for(2, others_cores(a, b)) == 2


def test_one_core_busy_with_another_process_leaves_one_thread(fake_proc):
    a = fake_proc(START, (300, 50))
    b = fake_proc(advanced(1, idle=100, base=advanced(0, user=100)), (300, 50))
    assert others_cores(a, b) == pytest.approx(1.0) and threads_for(2, others_cores(a, b)) == 1


def test_a_vcpu_the_hypervisor_steals_counts_as_busy(fake_proc):
    a = fake_proc(START, (300, 50))
    b = fake_proc(advanced(1, idle=100, base=advanced(0, steal=100)), (300, 50))
    assert threads_for(2, others_cores(a, b)) == 1


def test_our_own_busy_threads_are_not_others(fake_proc):
    """Both CPUs fully busy, all of it this process's (utime + stime grew by 200 jiffies)."""
    a = fake_proc(START, (300, 50))
    b = fake_proc(advanced(1, user=100, base=advanced(0, user=100)), (450, 100))
    assert others_cores(a, b) == pytest.approx(0.0) and threads_for(2, others_cores(a, b)) == 2


def test_cpus_outside_the_affinity_are_not_counted(fake_proc):
    a = fake_proc(START, (300, 50))
    b = fake_proc(advanced(2, user=100, base=advanced(1, idle=100, base=advanced(0, idle=100))), (300, 50))
    assert others_cores(a, b) == 0.0


def test_a_cgroup_quota_caps_the_cores_and_its_usage_is_what_competes(fake_proc, tmp_path, monkeypatch):
    """A container given 1 of the host's 2 CPUs: one core, and the host's other processes (busy
    on /proc/stat) do not count; the cgroup's own usage beyond ours does."""
    group = tmp_path / "sys" / "job"
    group.mkdir(parents=True)
    (tmp_path / "cgroup").write_text("0::/job\n")
    (group / "cpu.max").write_text("100000 100000\n")
    monkeypatch.setattr(th, "CGROUP_ROOT", str(tmp_path / "sys"))
    meter = CpuMeter(cpus={0, 1})
    assert meter.cores == 1
    (group / "cpu.stat").write_text("usage_usec 5000000\nuser_usec 4000000\n")
    fake_proc(START, (300, 50))
    a = meter.read()
    (group / "cpu.stat").write_text("usage_usec 5400000\nuser_usec 4400000\n")  # 0.4 s in one second
    fake_proc(advanced(1, user=100, base=advanced(0, user=100)), (320, 50))  # 0.2 s of it ours
    b = meter.read()
    assert others_cores(a, b) == pytest.approx(0.2)


def test_no_proc_keeps_torchs_default(tmp_path, monkeypatch, capsys):
    """macOS and Windows have no /proc: nothing is set, and the start-up line says why."""
    monkeypatch.setattr(th, "PROC_STAT", str(tmp_path / "missing"))
    monkeypatch.setattr(th, "MIN_WINDOW_S", 0.0)
    calls = record_set_num_threads(monkeypatch)
    t = Threads(0, CPU, is_main=True)
    assert t.start() == torch.get_num_threads() and calls == []
    assert "torch's default: no /proc" in capsys.readouterr().out


# ---------------------------------------------------------------- the choice and the check

class FakeMeter:
    """Readings as if other processes used `others[i]` cores during the i-th window (the last
    value holds after), on a machine of `cores`; the clock is the real one, so a window can be
    as short as the test makes it."""

    def __init__(self, others, cores=2):
        self.others, self.cores, self.reads, self.busy = list(others), cores, 0, 0.0
        self.last_wall = None

    def read(self) -> Counters:
        now = th.time.monotonic()
        if self.last_wall is not None:
            self.busy += self.others[min(self.reads - 1, len(self.others) - 1)] * (now - self.last_wall)
        self.reads, self.last_wall = self.reads + 1, now
        return Counters(now, self.busy, 0.0)


def record_set_num_threads(monkeypatch) -> list[int]:
    """torch.set_num_threads, recorded (get_num_threads answers the last one set) and not applied."""
    calls, default = [], torch.get_num_threads()
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.setattr(torch, "get_num_threads", lambda: calls[-1] if calls else default)
    return calls


class FakeLog:
    def __init__(self, tmp_path):
        self.enabled, self.path, self.lines = True, tmp_path / "metrics.jsonl", []

    def print(self, line):
        self.lines.append(line)


@pytest.mark.parametrize("others, want, says", [(0.0, 2, "2 cores idle"), (0.05, 2, "2 cores idle"),
                                                (1.0, 1, "using ~1.0 of 2 cores; --set train.threads=N"),
                                                (0.7, 1, "using ~0.7 of 2 cores"), (2.0, 1, "using ~2.0")])
def test_the_start_takes_the_cores_others_leave(monkeypatch, capsys, others, want, says):
    monkeypatch.setattr(th, "MIN_WINDOW_S", 0.0)
    calls = record_set_num_threads(monkeypatch)
    assert Threads(0, CPU, is_main=True, meter=FakeMeter([others])).start() == want
    assert calls == [want] and says in capsys.readouterr().out


def test_others_appearing_mid_run_are_reported_once_and_the_count_stays(monkeypatch, tmp_path):
    """Changing the count mid-run would change the weights' last bits (test below), so the check
    says what would suit the machine, with the fix, in a console line and a metrics.jsonl event."""
    monkeypatch.setattr(th, "MIN_WINDOW_S", 0.0)
    calls = record_set_num_threads(monkeypatch)
    t = Threads(0, CPU, is_main=True, meter=FakeMeter([0.0, 0.0, 1.0]), check_every=0.0)
    assert t.start() == 2
    log = FakeLog(tmp_path)
    t.check(5, log)  # still idle: nothing to say
    assert log.lines == [] and not log.path.exists()
    t.check(9, log)  # another process took a core
    t.check(12, log)
    assert calls == [2]  # the start's, and no other
    (line,) = log.lines
    assert "~1.0 of 2 cores" in line and "--resume with --set train.threads=1" in line
    (event,) = [json.loads(x) for x in log.path.read_text().splitlines()]
    assert event == {"step": 9, "event": "threads", "threads": 2, "suits": 1, "cores": 2, "others_cores": 1.0}


def test_the_check_waits_for_its_interval(monkeypatch, tmp_path):
    monkeypatch.setattr(th, "MIN_WINDOW_S", 0.0)
    record_set_num_threads(monkeypatch)
    meter = FakeMeter([0.0, 1.0])
    t = Threads(0, CPU, is_main=True, meter=meter, check_every=3600.0)
    t.start()
    reads = meter.reads
    t.check(1, FakeLog(tmp_path))
    assert meter.reads == reads  # a clock read, not /proc, between two checks


def test_a_fixed_count_is_applied_at_once_and_never_measured_or_changed(monkeypatch, tmp_path, capsys):
    calls = record_set_num_threads(monkeypatch)
    meter = FakeMeter([0.0, 1.0])
    t = Threads(2, CPU, is_main=True, meter=meter, check_every=0.0)
    assert calls == [2]  # before the setup's work, as train.threads always was
    assert t.start(saved=1) == 2  # a fixed count wins over a resumed run's
    log = FakeLog(tmp_path)
    t.check(3, log)
    assert meter.reads == 0 and log.lines == [] and set(calls) == {2} and capsys.readouterr().out == ""


def test_a_resumed_run_keeps_the_count_it_started_with(monkeypatch, capsys):
    monkeypatch.setattr(th, "MIN_WINDOW_S", 0.0)
    calls = record_set_num_threads(monkeypatch)
    assert Threads(0, CPU, is_main=True, meter=FakeMeter([1.0])).start(saved=2) == 2  # others would say 1
    assert calls == [2] and "a resumed run keeps it" in capsys.readouterr().out


def test_local_ranks_share_the_cores(monkeypatch, capsys):
    """torchrun's ranks on one machine: each would count the others as load, so they split the cores."""
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(th.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4}, raising=False)
    calls = record_set_num_threads(monkeypatch)
    meter = FakeMeter([0.0])
    t = Threads(0, CPU, is_main=True, meter=meter, check_every=0.0)
    assert t.start() == 2 and calls == [2] and meter.reads == 0
    assert "5 cores shared by 2 ranks here" in capsys.readouterr().out
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert Threads(0, CPU, is_main=False).start() == 1  # never 0


def test_a_gpu_run_keeps_torchs_default(monkeypatch):
    calls = record_set_num_threads(monkeypatch)
    meter = FakeMeter([1.0])
    Threads(0, torch.device("cuda"), is_main=True, meter=meter).start()
    assert calls == [] and meter.reads == 0


# ---------------------------------------------------------------- in the trainer

def test_the_default_takes_one_thread_while_another_process_uses_a_core(data_dir, tmp_path, monkeypatch):
    """train.threads at its default on a 2-core machine where another process keeps a core busy:
    the run trains at one thread (torch's default was both cores: a third of the speed, measured)."""
    monkeypatch.setattr(th, "CpuMeter", lambda: FakeMeter([1.0]))
    seen = []
    monkeypatch.setattr(th.Threads, "check", lambda self, step, log: seen.append(torch.get_num_threads()))
    torch.set_num_threads(2)  # torch's default on this machine, whatever an earlier test left
    s = run(data_dir, tmp_path / "run")
    assert torch.get_num_threads() == 1
    assert s["threads"] == 1 and seen == [1] * 4  # every step, and the count the checkpoint records


def test_others_appearing_mid_run_leave_an_event_in_metrics(data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(th, "CpuMeter", lambda: FakeMeter([0.0, 1.0]))
    monkeypatch.setattr(th, "CHECK_EVERY_S", 0.0)
    s = run(data_dir, tmp_path / "run")
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    events = [r for r in records if "event" in r]
    assert s["threads"] == 2 and torch.get_num_threads() == 2
    assert events == [{"step": 1, "event": "threads", "threads": 2, "suits": 1, "cores": 2, "others_cores": 1.0}]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]


def test_resume_keeps_the_count_the_run_started_with(data_dir, tmp_path, monkeypatch):
    """Measured idle at the start (2 threads), busy at the resume (1 would be chosen): the resumed
    steps run at 2, as the uninterrupted run's did, and the weights match it bit for bit."""
    sets = ["train.max_steps=8", "train.checkpoint_interval=4"]
    monkeypatch.setattr(th, "CpuMeter", lambda: FakeMeter([0.0]))
    whole, part = tmp_path / "whole", tmp_path / "part"
    run(data_dir, whole, *sets)
    shutil.copytree(whole, part)
    shutil.rmtree(part / "checkpoint-000008")  # as if it stopped after the checkpoint at step 4
    (part / "summary.json").unlink()
    monkeypatch.setattr(th, "CpuMeter", lambda: FakeMeter([1.0]))
    s = run(data_dir, part, *sets, resume=True)
    assert s["threads"] == 2
    a, b = (load_file(d / "checkpoint-000008" / "model.safetensors") for d in (whole, part))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_one_and_two_threads_train_different_bits(data_dir, tmp_path):
    """Why the count is chosen once and kept on resume: at the tiny preset's shapes, 3 steps at
    1 and at 2 threads give weights that differ in the last bits (torch's CPU LayerNorm backward
    sums its weight and bias gradients one chunk per thread). Should this ever fail, torch became
    thread-count invariant here and the count could follow the machine mid-run."""
    sets = ["train.max_steps=3", "train.checkpoint_interval=3", "train.batch_size=16", "train.eval_sequences=16",
            "train.peak_flops=1e11", "train.precision=fp32", "data.seq_len=64"]
    weights = []
    for n in (1, 2):
        pretrain(str(data_dir), str(tmp_path / f"t{n}"), apply_overrides(tiny(), sets + [f"train.threads={n}"]),
                 progress=False)
        weights.append(load_file(tmp_path / f"t{n}" / "checkpoint-000003" / "model.safetensors"))
    one, two = weights
    differ = [k for k in one if not torch.equal(one[k], two[k])]
    assert differ and all(torch.allclose(one[k], two[k], atol=1e-4) for k in one)


def test_quickstart_leaves_the_count_to_the_measurement(monkeypatch, tmp_path, corpus_docs):
    """Right after `make test` the one-minute load average is still high on an idle machine: the
    quickstart used to choose one thread from it (830 s where ~5 min was promised). Now its
    pretraining gets train.threads=0, measured when it starts."""
    import roberta.quickstart as qs

    class Started(Exception):
        pass

    def pretrain_started(data, out, cfg, progress=True):
        raise Started(cfg)

    monkeypatch.setattr(th.os, "getloadavg", lambda: (9.0, 6.0, 3.0))
    monkeypatch.setattr(qs, "stdlib_documents", lambda: iter(corpus_docs))
    monkeypatch.setattr(qs, "pretrain", pretrain_started)
    with pytest.raises(Started) as e:
        qs.quickstart(tmp_path / "qs", steps=2, progress=False)
    assert e.value.args[0].train.threads == 0  # --threads N reaching it: test_cli.py
