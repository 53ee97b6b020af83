"""CheckpointManager: DCP round trips, async save, commit marker, pruning, resume checks, fsspec, gloo."""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.stateful import Stateful

from soraflow.training.checkpoint import COMMIT_MARKER, CheckpointError, CheckpointManager, ResumeMismatchError

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")


# Stateful wrappers the manager is exercised with (the trainer's own TrainState is one such object).
class ModelOptimizerState(Stateful):
    """Model (+ optimizers) through DCP's ``get_state_dict``/``set_state_dict`` (FSDP2/DTensor-aware)."""

    def __init__(self, model: torch.nn.Module, optimizers: torch.optim.Optimizer | Iterable | None = None):
        self.model = model
        if optimizers is None:
            self.optimizers: list = []
        elif isinstance(optimizers, torch.optim.Optimizer):
            self.optimizers = [optimizers]
        else:
            self.optimizers = list(optimizers)

    def state_dict(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        msd, osd = get_state_dict(self.model, self.optimizers)
        return {"model": msd, "optim": osd}

    def load_state_dict(self, sd: dict) -> None:
        from torch.distributed.checkpoint.state_dict import set_state_dict

        set_state_dict(self.model, self.optimizers, model_state_dict=sd["model"], optim_state_dict=sd["optim"])


class RNGState(Stateful):
    """Python, NumPy, torch CPU (and CUDA) RNG streams of *this rank*, saved under a per-rank key."""

    def __init__(self, rank: int | None = None):
        self.rank = rank if rank is not None else (dist.get_rank() if dist.is_available() and dist.is_initialized() else 0)

    def state_dict(self) -> dict:
        # tuples are leaves for DCP: pickled as one object each, so sizes may change between save and load
        sd = {"torch_cpu": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            sd["torch_cuda"] = torch.cuda.get_rng_state()
        return {f"rank{self.rank}": sd}

    def load_state_dict(self, sd: dict) -> None:
        mine = sd[f"rank{self.rank}"]
        torch.set_rng_state(mine["torch_cpu"])
        random.setstate(tuple(mine["python"]))
        np.random.set_state(mine["numpy"])
        if "torch_cuda" in mine and torch.cuda.is_available():
            torch.cuda.set_rng_state(mine["torch_cuda"])


def _resume(mgr, state, metadata_now, *, reset_data_state=False):
    """What a trainer does on start: check the newest checkpoint against this run, then load it (without the
    data-loader state when that was reset). None when there is nothing to resume from."""
    if mgr.latest_complete() is None:
        return None
    chk = mgr.check_resume(metadata_now, reset_data_state=reset_data_state)
    mgr.load(chk.step, state, exclude=chk.exclude)
    return chk


def _model_and_optim(seed: int):
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.GELU(), torch.nn.Linear(5, 3))
    o = torch.optim.AdamW(m.parameters(), lr=1e-2)
    for _ in range(2):
        m(torch.randn(4, 6)).pow(2).mean().backward()
        o.step()
        o.zero_grad()
    return m, o


def _state(m, o, extra, loader):
    return {"app": ModelOptimizerState(m, o), "rng": RNGState(), "extra": extra, "dataloader": loader}


def _assert_same_model_optim(m1, o1, m2, o2):
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    s1, s2 = o1.state_dict(), o2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for pid in s1["state"]:
        for k, v in s1["state"][pid].items():
            assert torch.equal(v, s2["state"][pid][k]), (pid, k)


def test_round_trip_model_optimizer_rng_and_dict(tmp_path):
    mgr = CheckpointManager(str(tmp_path / "ckpt"), keep_n_latest=3)
    m, o = _model_and_optim(0)
    ref_model = {k: v.clone() for k, v in m.state_dict().items()}
    extra = {"step": 7, "epoch": 1, "name": "tiny", "ema_decay": 0.999, "buf": torch.arange(4.0)}
    loader = {"rank0": {"index": 123, "seed": 5}}
    res = mgr.save(7, _state(m, o, extra, loader), {"dp_size": 1, "data_rev": "rev-a"})
    # staged at return: changing the live model now must not leak into the checkpoint
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    mgr.wait()
    assert res.committed and res.total_s is not None and res.total_s >= res.blocking_s
    assert mgr.latest_complete() == 7
    after_save = (torch.rand(3), __import__("random").random())

    m2, o2 = _model_and_optim(1)  # different weights and optimizer moments
    extra2 = {"step": 0, "epoch": 0, "name": "", "ema_decay": 0.0, "buf": torch.zeros(4)}
    loader2 = {"rank0": {"index": 0, "seed": 0}}
    torch.rand(5)
    meta = mgr.load(7, _state(m2, o2, extra2, loader2))
    for k, v in ref_model.items():
        assert torch.equal(m2.state_dict()[k], v), k
    m.load_state_dict(ref_model)
    _assert_same_model_optim(m, o, m2, o2)
    assert extra2["step"] == 7 and extra2["name"] == "tiny" and extra2["ema_decay"] == 0.999
    assert torch.equal(extra2["buf"], torch.arange(4.0))
    assert loader2 == loader
    # RNG restored to the save point: the same draws come again
    assert torch.equal(torch.rand(3), after_save[0]) and __import__("random").random() == after_save[1]
    assert meta["step"] == 7 and meta["data_rev"] == "rev-a" and meta["world_size"] == 1
    assert {"time", "soraflow_version", "dp_size"} <= set(meta)


class _GatedWriter(dcp.FileSystemWriter):
    gate = threading.Event()
    entered = threading.Event()

    def write_data(self, plan, planner):
        type(self).entered.set()
        assert type(self).gate.wait(30), "gate never opened"
        return super().write_data(plan, planner)


class _GatedManager(CheckpointManager):
    def _storage_writer(self, path):
        return _GatedWriter(path)


def test_async_save_returns_before_write_and_wait_commits(tmp_path):
    _GatedWriter.gate.clear()
    _GatedWriter.entered.clear()
    mgr = _GatedManager(str(tmp_path), keep_n_latest=2)
    t = {"w": torch.ones(64)}
    res = mgr.save(1, {"t": t}, {})
    # save() has returned while the writer thread is held at the gate: nothing is committed yet
    assert _GatedWriter.entered.wait(10)
    assert mgr.in_flight and not res.committed and res.total_s is None
    assert not (tmp_path / "step-00000001" / COMMIT_MARKER).exists()
    t["w"].mul_(0)  # the caller carries on changing state
    _GatedWriter.gate.set()
    waited = mgr.wait()
    assert waited >= 0 and res.committed and not mgr.in_flight
    assert (tmp_path / "step-00000001" / COMMIT_MARKER).exists()
    out = {"t": {"w": torch.zeros(64)}}
    mgr.load(1, out)
    assert torch.equal(out["t"]["w"], torch.ones(64))


def test_uncommitted_folder_is_never_latest(tmp_path):
    mgr = CheckpointManager(str(tmp_path), keep_n_latest=5, async_save=False)
    for s in (1, 2):
        mgr.save(s, {"x": torch.full((3,), float(s))}, {})
    assert mgr.latest_complete() == 2
    os.unlink(tmp_path / "step-00000002" / COMMIT_MARKER)  # data fully written, marker lost
    assert mgr.latest_complete() == 1
    with pytest.raises(CheckpointError, match="COMMIT"):
        mgr.load(2, {"x": torch.zeros(3)})
    mgr.save(2, {"x": torch.full((3,), 9.0)}, {})  # a re-save replaces the half-written folder
    out = {"x": torch.zeros(3)}
    mgr.load(mgr.latest_complete(), out)
    assert torch.equal(out["x"], torch.full((3,), 9.0))


_KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time, torch, torch.distributed.checkpoint as dcp
    sys.path.insert(0, {repo!r})
    from soraflow.training.checkpoint import CheckpointManager
    root, flag = sys.argv[1], sys.argv[2]

    class Stuck(dcp.FileSystemWriter):
        def write_data(self, plan, planner):
            fut = super().write_data(plan, planner)
            fut.wait()                      # the data file is on disk ...
            open(flag, "w").close()
            time.sleep(600)                 # ... and the process dies before the save finishes
            return fut

    class M(CheckpointManager):
        stuck = False
        def _storage_writer(self, path):
            return Stuck(path) if self.stuck else super()._storage_writer(path)

    mgr = M(root, keep_n_latest=3)
    mgr.save(1, {{"x": torch.ones(8)}}, {{}}); mgr.wait()
    mgr.stuck = True
    mgr.save(2, {{"x": torch.full((8,), 2.0)}}, {{}})
    time.sleep(600)
    """
)


def test_process_killed_mid_save_leaves_previous_checkpoint_latest(tmp_path):
    root, flag = tmp_path / "ck", tmp_path / "written"
    script = tmp_path / "kill_me.py"
    script.write_text(_KILL_SCRIPT.format(repo=str(REPO)))
    p = subprocess.Popen([sys.executable, str(script), str(root), str(flag)])
    try:
        deadline = time.time() + 60
        while not flag.exists():
            assert p.poll() is None, "writer process exited early"
            assert time.time() < deadline, "writer never reached the data write"
            time.sleep(0.05)
        p.send_signal(signal.SIGKILL)
        p.wait(10)
    finally:
        if p.poll() is None:
            p.kill()
    half = root / "step-00000002"
    assert any(f.suffix == ".distcp" for f in half.iterdir())  # data was written ...
    assert not (half / COMMIT_MARKER).exists()  # ... but never committed
    mgr = CheckpointManager(str(root), keep_n_latest=3)
    assert mgr.latest_complete() == 1
    out = {"x": torch.zeros(8)}
    mgr.load(1, out)
    assert torch.equal(out["x"], torch.ones(8))


def test_keep_n_latest_prunes_only_committed(tmp_path):
    mgr = CheckpointManager(str(tmp_path), keep_n_latest=2)
    (tmp_path / "step-00000000").mkdir()  # an old half-written folder: not ours to delete
    for s in range(1, 6):
        mgr.save(s, {"x": torch.tensor([float(s)])}, {})
    mgr.wait()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["step-00000000", "step-00000004", "step-00000005"]
    assert mgr.committed_steps() == [4, 5]
    assert [r.step for r in mgr.history] == [1, 2, 3, 4, 5]


class _TrainState:
    """A trainer-style Stateful: one entry holding model, progress and per-rank data position."""

    def __init__(self):
        self.w, self.step, self.data = torch.zeros(3), 0, None

    def state_dict(self):
        return {"model": {"w": self.w}, "progress": {"step": self.step}, "data_rank0": {"index": self.data or 0}}

    def load_state_dict(self, sd):
        self.w.copy_(sd["model"]["w"])
        self.step = sd["progress"]["step"]
        self.data = sd["data_rank0"]["index"] if "data_rank0" in sd else None


def test_resume_refuses_dp_or_data_revision_change_unless_reset(tmp_path):
    mgr = CheckpointManager(str(tmp_path), keep_n_latest=2, async_save=False)
    saved = _TrainState()
    saved.w, saved.step, saved.data = torch.arange(3.0), 10, 40
    mgr.save(10, {"train": saved, "dataloader": {"rank0": {"index": 40}}}, {"dp_size": 8, "data_revision": "abc123"})
    ok = mgr.check_resume({"dp_size": 8, "data_rev": "abc123"})
    assert ok.step == 10 and ok.exclude == ()
    assert mgr.check_resume({"dp_size": 8, "data_revision": "abc123"}, 10).exclude == ()  # an explicit step
    with pytest.raises(ResumeMismatchError, match=r"dp_size: checkpoint has 8, this run has 4.*reset_data_state"):
        mgr.check_resume({"dp_size": 4, "data_rev": "abc123"})
    with pytest.raises(ResumeMismatchError, match="data_rev: checkpoint has 'abc123', this run has 'def456'"):
        mgr.check_resume({"dp_size": 8, "data_rev": "def456"})

    def fresh():
        return {"train": _TrainState(), "dataloader": {"rank0": {"index": 0}}}

    state = fresh()
    with pytest.raises(ResumeMismatchError):
        _resume(mgr, state, {"dp_size": 4, "data_rev": "def456"})
    chk = _resume(mgr, state, {"dp_size": 4, "data_rev": "def456"}, reset_data_state=True)
    assert chk.step == 10 and "dataloader" in chk.exclude and len(chk.mismatches) == 2
    tr = state["train"]
    assert torch.equal(tr.w, torch.arange(3.0)) and tr.step == 10  # model and progress loaded
    assert tr.data is None  # the nested data_rank0 entry was not handed back
    assert state["dataloader"] == {"rank0": {"index": 0}}  # top-level data entry left at its fresh value
    state = fresh()
    mgr.load(10, state)  # a plain load (e.g. a rollback) restores the data position too
    assert state["train"].data == 40 and state["dataloader"] == {"rank0": {"index": 40}}
    assert _resume(CheckpointManager(str(tmp_path / "empty"), 1), fresh(), {}) is None


@pytest.mark.parametrize("scheme", ["memory", "file"])
def test_fsspec_url_round_trip(tmp_path, scheme):
    root = f"memory://soraflow-test-{os.getpid()}/ckpt" if scheme == "memory" else f"file://{tmp_path}/ckpt"
    mgr = CheckpointManager(root, keep_n_latest=1)
    m, o = _model_and_optim(0)
    for s in (1, 2):
        mgr.save(s, {"app": ModelOptimizerState(m, o), "extra": {"s": s}}, {"data_rev": "r"})
    mgr.wait()
    assert mgr.latest_complete() == 2 and mgr.committed_steps() == [2]
    assert mgr.path_for(2) == root + "/step-00000002"
    m2, o2 = _model_and_optim(3)
    extra = {"s": 0}
    meta = mgr.load(2, {"app": ModelOptimizerState(m2, o2), "extra": extra})
    _assert_same_model_optim(m, o, m2, o2)
    assert extra == {"s": 2} and meta["data_rev"] == "r"
    if scheme == "memory":
        mgr.fs.rm(mgr._root_path, recursive=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gloo_worker(rank, world, port, root):
    import random

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        mgr = CheckpointManager(root, keep_n_latest=2)
        m, o = _model_and_optim(0)  # replicated (DDP-like) model, same on both ranks
        torch.manual_seed(100 + rank)
        random.seed(100 + rank)
        loader = {f"rank{rank}": {"index": 10 * (rank + 1)}}  # per-rank data state
        mgr.save(3, _state(m, o, {"step": 3}, loader), {"dp_size": world, "data_rev": "x"})
        expect = torch.rand(2)  # this rank's next draw after the save point
        mgr.wait()
        assert mgr.latest_complete() == 3
        m2, o2 = _model_and_optim(5)
        loader2 = {f"rank{rank}": {"index": -1}}
        extra = {"step": 0}
        chk = _resume(mgr, _state(m2, o2, extra, loader2), {"dp_size": world, "data_rev": "x"})
        assert chk.step == 3 and extra["step"] == 3
        _assert_same_model_optim(m, o, m2, o2)
        assert loader2 == loader, (rank, loader2)
        assert torch.equal(torch.rand(2), expect), rank  # per-rank RNG stream restored
        try:
            mgr.check_resume({"dp_size": world * 2, "data_rev": "x"})
            raise AssertionError("dp-size change was not refused")
        except ResumeMismatchError:
            pass
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_save_load(tmp_path):
    import torch.multiprocessing as mp

    root = str(tmp_path / "ck")
    mp.spawn(_gloo_worker, args=(2, _free_port(), root), nprocs=2, join=True)
    assert (Path(root) / "step-00000003" / COMMIT_MARKER).exists()
    files = sorted(p.name for p in (Path(root) / "step-00000003").iterdir())
    assert "__0_0.distcp" in files and "__1_0.distcp" in files
    meta = json.loads((Path(root) / "step-00000003" / "metadata.json").read_text())
    assert meta["world_size"] == 2 and meta["dp_size"] == 2
