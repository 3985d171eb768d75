"""Crash safety: a real process is SIGKILLed at every step of ``LightCL.save`` and at random moments.

How: this file is also the child program. A *zygote* (``python tests/test_crash_safety.py --zygote``)
imports torch once and builds a learner; for every kill it forks a fresh writer process that stamps
a version ``v`` into the learner (every parameter, BN buffer, momentum buffer, buffered feature and
target, ``counters["steps"]`` and ``extra["version"]`` identify ``v``) and saves it:

- deterministic kill points: the writer instruments the file-system calls ``save`` makes (os.fsync,
  os.rename, os.replace, os.unlink, os.rmdir, os.mkdir, tempfile.mkdtemp/mkstemp, shutil.rmtree,
  safetensors' save_file, and every ``write`` to a file opened for writing, which is split in two
  halves with a kill point between them) and SIGKILLs itself before/after the N-th call, for every
  N of a traced save;
- random kills: a writer saves versions in a loop and the zygote SIGKILLs it after a random delay;
- the zygote itself (a spawned child of this test) is SIGKILLed while saving in a loop.

After every kill this process runs ``LightCL.load`` (which recovers an interrupted swap) and checks
that it gets exactly the last completed version or the one being written, complete (every tensor
and counter says the same ``v``), never an error, and that no temporary directory is left behind.
"""
from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import write_counts

FROZEN_ID = "crash-test-frozen-part"
COUNTS: collections.Counter = collections.Counter()


# ---------------------------------------------------------------- shared by the zygote and the test
class _Stub:
    """Extractor stand-in: the frozen part as a torch module (load needs only frozen_id)."""

    frozen_id = FROZEN_ID
    meta = {"input_shape": [3, 32, 32]}

    def __init__(self, frozen=None):
        self.frozen = frozen

    def __call__(self, x):
        with torch.no_grad():
            return self.frozen(x)


def build_learner():
    from lightcl.engine.learner import LightCL
    from lightcl.export.zoo import create_backbone, split_backbone

    torch.manual_seed(0)
    frozen, head = split_backbone(create_backbone("resnet18", width=16).eval(), "layer3")
    lr = LightCL(_Stub(frozen), head, num_classes=4, momentum=0.9, buffer_size=6)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 32, 32, generator=g)
    lr.begin_task(0, [0, 1])
    lr.observe(x, torch.tensor([0, 1] * 4))
    lr.end_task()
    lr.begin_task(1, [2, 3])
    lr.observe(x, torch.tensor([2, 3] * 4))  # buffer, targets, momentum buffers, last features
    return lr


def _pattern(shape, v: int, i: int) -> torch.Tensor:
    return torch.full(shape, float(v)) + (i % 97) / 1024.0


@torch.no_grad()
def stamp(lr, v: int) -> None:
    """Make every piece of the learner's state say ``v``."""
    for i, p in enumerate(lr.head.parameters()):
        p.copy_(_pattern(p.shape, v, i))
        lr.optimizer.state[p]["momentum_buffer"] = _pattern(p.shape, v, i + 500)
    for name, b in lr.head.named_buffers():
        b.fill_(v if name.endswith("num_batches_tracked") else v + 1)
    lr.memory.features.fill_(v)
    for t in lr.memory.targets.values():
        t.fill_(v)
    lr.counters["steps"] = v
    lr.extra["version"] = v


def version_of(lr) -> int:
    """The version a loaded learner holds; raises AssertionError if its parts disagree (a mix)."""
    v = lr.extra["version"]
    assert lr.counters["steps"] == v, ("counters", lr.counters, v)
    for i, p in enumerate(lr.head.parameters()):
        assert torch.equal(p.detach(), _pattern(p.shape, v, i)), ("param", i, v)
        assert torch.equal(lr.optimizer.state[p]["momentum_buffer"], _pattern(p.shape, v, i + 500)), ("momentum", i)
    for name, b in lr.head.named_buffers():
        want = v if name.endswith("num_batches_tracked") else v + 1
        assert bool((b == want).all()), ("buffer", name, v)
    assert bool((lr.memory.features == v).all()), ("buffer features", v)
    assert all(bool((t == v).all()) for t in lr.memory.targets.values()), ("targets", v)
    return v


# ---------------------------------------------------------------- instrumentation (writer processes only)
class _WriteTap:
    """A file opened for writing whose ``write`` is two halves with a kill point in between."""

    def __init__(self, f, event):
        self._f, self._event = f, event

    def write(self, data):
        self._event("write:before")
        half = len(data) // 2
        self._f.write(data[:half])
        self._f.flush()
        self._event("write:half")
        self._f.write(data[half:])
        self._event("write:after")
        return len(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self._f, name)


def instrument(event) -> None:
    import builtins
    import io
    import shutil
    import tempfile

    import safetensors.torch as st

    def wrap(mod, name, describe=None):
        orig = getattr(mod, name)

        def w(*a, **k):
            event(f"{name}:before", describe(a) if describe else None)
            r = orig(*a, **k)
            event(f"{name}:after", describe(a) if describe else None)
            return r

        setattr(mod, name, w)

    def fd_path(a):
        try:
            return os.readlink(f"/proc/self/fd/{a[0]}")
        except OSError:
            return None

    wrap(os, "fsync", fd_path)
    wrap(os, "rename", lambda a: [str(a[0]), str(a[1])])
    wrap(os, "replace", lambda a: [str(a[0]), str(a[1])])
    for name in ("unlink", "rmdir", "mkdir"):
        wrap(os, name)
    for mod, name in ((tempfile, "mkdtemp"), (tempfile, "mkstemp"), (shutil, "rmtree"), (st, "save_file")):
        wrap(mod, name)
    orig_open, orig_fdopen = io.open, os.fdopen

    def open_w(file, mode="r", *a, **k):
        f = orig_open(file, mode, *a, **k)
        return _WriteTap(f, lambda n: event(n)) if any(c in mode for c in "wax+") else f

    def fdopen_w(fd, mode="r", *a, **k):
        f = orig_fdopen(fd, mode, *a, **k)
        return _WriteTap(f, lambda n: event(n)) if any(c in mode for c in "wax+") else f

    io.open = builtins.open = open_w
    os.fdopen = fdopen_w


# ---------------------------------------------------------------- the zygote (child program)
def _zygote(state_dir: str) -> None:
    torch.set_num_threads(1)
    lr = build_learner()
    out = sys.stdout
    print(json.dumps({"ready": True}), file=out, flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "quit":
            return
        if op == "save":  # a complete save, in the zygote itself
            stamp(lr, cmd["version"])
            lr.save(state_dir)
            print(json.dumps({"saved": cmd["version"]}), file=out, flush=True)
            continue
        if op == "loop":  # save forever in the zygote itself: the test kills this very process
            v = cmd["version"]
            log = os.open(cmd["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            print(json.dumps({"looping": True}), file=out, flush=True)
            while True:
                stamp(lr, v)
                lr.save(state_dir)
                os.write(log, f"{v}\n".encode())
                v += 1
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # ------------------------------------------------ writer process
            os.close(rfd)
            try:
                _writer(lr, state_dir, cmd, wfd)
            finally:
                os._exit(0)
        os.close(wfd)
        if op == "random":
            time.sleep(cmd["delay"])
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        with os.fdopen(rfd, "rb") as f:
            data = f.read().decode()
        reply = {"killed": os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL,
                 "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None, "data": data}
        print(json.dumps(reply), file=out, flush=True)


def _writer(lr, state_dir: str, cmd: dict, wfd: int) -> None:
    op = cmd["op"]
    if op == "trace":
        events = []
        armed = [False]

        def event(name, arg=None):
            if armed[0]:
                events.append([name, arg])

        instrument(event)
        stamp(lr, cmd["version"])
        armed[0] = True
        lr.save(state_dir)
        armed[0] = False
        os.write(wfd, json.dumps(events).encode())
    elif op == "kill_at":
        n = [0]
        armed = [False]

        def event(name, arg=None):
            if armed[0]:
                if n[0] == cmd["point"]:
                    os.kill(os.getpid(), signal.SIGKILL)
                n[0] += 1

        instrument(event)
        stamp(lr, cmd["version"])
        armed[0] = True
        lr.save(state_dir)
        os.write(wfd, b"completed")
    elif op == "random":
        v = cmd["version"]
        while True:  # killed from outside
            stamp(lr, v)
            lr.save(state_dir)
            os.write(wfd, f"{v}\n".encode())
            v += 1
    elif op == "reader":  # load in a loop while another process saves
        from lightcl.engine.learner import LightCL

        t_end = time.monotonic() + cmd["seconds"]
        loads, errors, versions = 0, [], set()
        while time.monotonic() < t_end:
            try:
                versions.add(version_of(LightCL.load(state_dir, _Stub())))
                loads += 1
            except Exception as e:  # noqa: BLE001 - counted and reported
                errors.append(f"{type(e).__name__}: {e}"[:300])
        os.write(wfd, json.dumps({"loads": loads, "errors": errors[:5], "n_errors": len(errors),
                                  "versions": len(versions)}).encode())


# ---------------------------------------------------------------- the test side
class Zygote:
    def __init__(self, state_dir: Path):
        self.dir = state_dir
        self.proc = None

    def _spawn(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, __file__, "--zygote", str(self.dir)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        assert self._read().get("ready")

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"zygote died (rc {self.proc.poll()})")
        return json.loads(line)

    def send(self, **cmd):
        if self.proc is None or self.proc.poll() is not None:  # first use, or killed by a test
            self._spawn()
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def ask(self, **cmd) -> dict:
        self.send(**cmd)
        return self._read()

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.send(op="quit")
                self.proc.wait(timeout=10)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    d = tmp_path_factory.mktemp("crash") / "state"
    z = Zygote(d)
    assert z.ask(op="save", version=1) == {"saved": 1}
    yield z
    z.close()


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    write_counts("crash_safety", COUNTS)
    if COUNTS:
        print("\ncrash safety:", dict(sorted(COUNTS.items())))


def _load_version(d: Path) -> int:
    from lightcl.engine.learner import LightCL

    v = version_of(LightCL.load(d, _Stub()))
    litter = sorted(p.name for p in d.parent.iterdir() if p.name != d.name)
    assert not litter, f"left behind after recovery: {litter}"
    return v


def test_trace_and_fsync_ordering(zygote):
    """The traced save: enough kill points, and the power-loss order (fsync files, then rename, then fsync dir)."""
    events = json.loads(zygote.ask(op="trace", version=2)["data"])
    assert _load_version(zygote.dir) == 2
    names = [e[0] for e in events]
    assert len(names) >= 30, names
    renames = [i for i, e in enumerate(events) if e[0] == "rename:after"]
    assert len(renames) == 2, names  # dest -> old, tmp -> dest
    tmp = Path(events[renames[1]][1][0])
    fsynced_before = {e[1] for e in events[:renames[1]] if e[0] == "fsync:after" and e[1]}
    for f in ("head.safetensors", "learner.safetensors", "state.json"):
        assert str(tmp / f) in fsynced_before, f"{f} not fsynced before the swap"
    assert str(tmp) in fsynced_before, "temporary directory not fsynced before the swap"
    assert str(zygote.dir.parent) in {e[1] for e in events[renames[1]:] if e[0] == "fsync:after"}, \
        "parent directory not fsynced after the swap"
    # the last write into each file happens before that file's fsync
    COUNTS["traced events per save"] = len(names)


def test_sigkill_at_every_step_of_save(zygote):
    events = json.loads(zygote.ask(op="trace", version=3)["data"])
    assert _load_version(zygote.dir) == 3
    visible = [i for i, e in enumerate(events) if e[0] == "rename:after"][1]  # tmp -> dest done
    prev, v = 3, 100
    kinds = collections.Counter()
    for point, (name, _) in enumerate(events):
        r = zygote.ask(op="kill_at", version=v, point=point)
        assert r["killed"], (point, name, r)
        got = _load_version(zygote.dir)
        want = v if point >= visible else prev
        assert got == want, f"kill at event {point} ({name}): loaded version {got}, expected {want}"
        COUNTS["kill points (deterministic)"] += 1
        kinds[name.split(":")[0]] += 1
        prev, v = got, v + 1
    for k, n in kinds.items():
        COUNTS[f"kill points at {k}"] += n
    assert COUNTS["kill points (deterministic)"] >= 30


def test_sigkill_at_random_moments(zygote):
    rng = random.Random(1234)
    t0 = time.perf_counter()
    zygote.ask(op="save", version=4)
    save_s = max(0.002, time.perf_counter() - t0)
    prev, base = _load_version(zygote.dir), 10_000
    new_seen = 0
    for k in range(30):
        delay = rng.uniform(0.0, 4 * save_s)
        r = zygote.ask(op="random", version=base, delay=delay)
        assert r["killed"], r
        done = [int(s) for s in r["data"].split()]
        last = done[-1] if done else prev
        got = _load_version(zygote.dir)
        # the last completed version, or the one that was being written; never older, never a mix
        assert got in (last, (done[-1] + 1) if done else base), (k, delay, done[-3:], got)
        new_seen += got != last
        COUNTS["kill points (random time)"] += 1
        COUNTS["saves completed before random kills"] += len(done)
        prev, base = got, base + 1000
    COUNTS["random kills that landed after the swap, before the log line"] += new_seen


def test_reader_process_while_writer_saves(zygote):
    """Another process loads the state in a loop while this one saves: no error on either side
    (a reader's recovery used to delete the writer's temporary directory)."""
    lr = build_learner()
    zygote.send(op="reader", seconds=3.0)
    t_end = time.monotonic() + 3.0
    saves, v = 0, 50_000
    while time.monotonic() < t_end:
        stamp(lr, v)
        lr.save(zygote.dir)
        saves, v = saves + 1, v + 1
    r = json.loads(zygote._read()["data"])
    assert r["n_errors"] == 0, r["errors"]
    assert r["loads"] >= 5 and saves >= 5, (r, saves)
    COUNTS["concurrent reader loads"] += r["loads"]
    COUNTS["concurrent writer saves"] += saves
    assert _load_version(zygote.dir) == v - 1


def test_sigkill_the_spawned_child_while_it_saves(zygote, tmp_path):
    """The zygote itself (spawned by this test, not forked) is killed by this process mid-loop."""
    log = tmp_path / "log"
    zygote.ask(op="save", version=7)
    assert _load_version(zygote.dir) == 7
    zygote.send(op="loop", version=90_000, log=str(log))
    assert zygote._read() == {"looping": True}
    deadline = time.monotonic() + 60
    while (not log.exists() or len(log.read_text().split()) < 3) and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(random.Random(7).uniform(0, 0.02))
    zygote.proc.send_signal(signal.SIGKILL)
    zygote.proc.wait()
    done = [int(s) for s in log.read_text().split()]
    got = _load_version(zygote.dir)
    assert got in (done[-1], done[-1] + 1), (done[-3:], got)
    COUNTS["kill points (spawned process)"] += 1


def test_state_lost_is_zero():
    """Summary row for the closing table (every kill above asserted the version it must load)."""
    COUNTS["state lost"] += 0


if __name__ == "__main__" and len(sys.argv) >= 3 and sys.argv[1] == "--zygote":
    _zygote(sys.argv[2])
