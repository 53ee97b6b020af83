"""Checkpoints on `torch.distributed.checkpoint` (DCP): async save, commit marker, pruning, resume checks.

Layout under ``root`` (a local folder or an fsspec URL such as ``gs://bucket/run/ckpt``)::

    step-00001000/
        __0_0.distcp ...   DCP data, one file per rank
        .metadata          DCP's own index (written by the coordinator once every rank has written)
        metadata.json      ours: step, world/dp size, data revision, time, soraflow version, + caller fields
        COMMIT             written LAST; a folder without it is never chosen for resume or pruned

What a save does (all ranks call it; it is collective):

1. wait for the previous async save to finish and commit (that wait is part of the blocking time);
2. ``dcp.async_save``: the state is staged (copied to CPU memory) synchronously, so the caller may
   change parameters as soon as ``save`` returns; the write runs in a background thread on a dedicated
   gloo process group so it never interleaves with the trainer's collectives;
3. when the write is done, rank 0 writes ``metadata.json`` then ``COMMIT``, then prunes older *committed*
   checkpoints beyond ``keep_n_latest``. This happens in the writer thread as soon as the data is durable,
   and at the latest in ``wait()``; call ``wait()`` (or ``close()``) before the process exits.

``save`` returns a :class:`SaveResult` with ``blocking_s`` (time the caller was held: waiting for the
previous save + staging) and, once committed, ``total_s``. Goodput attributes only ``blocking_s`` to
``checkpoint_save`` badput.

State entries are Stateful objects (``state_dict()``/``load_state_dict()``), nested dicts, tensors or
picklable values. Model/optimizer state should go through
``torch.distributed.checkpoint.state_dict.get_state_dict/set_state_dict`` (FSDP2/DTensor-aware), as the
training strategies' ``state_dict`` does.
Values that differ per rank (RNG, data-loader position) must live under per-rank keys: DCP keeps one copy
of a plain (non-DTensor) tensor or object saved under the same key by several ranks.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
import os
import re
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from soraflow.common.atomic import write_bytes_atomic
from soraflow.common.provenance import package_version
from torch.distributed.checkpoint.stateful import Stateful

log = logging.getLogger(__name__)

# Single-process use (no process group) is intended here; DCP warns about it on every call.
warnings.filterwarnings("ignore", message=r"torch\.distributed is (disabled, )?unavailable or uninitialized, assuming")

COMMIT_MARKER = "COMMIT"
METADATA_FILE = "metadata.json"
_STEP_DIR = re.compile(r"^step-(\d{8,})$")

# Fields of the run that make the saved data-loader state meaningless when they change (pitfall 5:
# torchtitan #816, Megatron-Bridge#5637). batch_size is only compared when both sides record it.
DATA_STATE_GUARDS: tuple[str, ...] = ("dp_size", "data_rev", "global_batch_size")
# Accepted spellings, normalised to the guard names.
_META_ALIASES = {"data_revision": "data_rev", "dp_world_size": "dp_size", "dp_world": "dp_size"}
# State entries that hold data-loader/sampler position; fnmatch patterns, matched at the top level of the
# state and one level down (inside each Stateful's state_dict), so {"train": TrainState} with
# "data_rank{r}" inside it is covered.
DEFAULT_DATA_STATE_KEYS: tuple[str, ...] = ("dataloader", "dataloader_rank*", "data_rank*", "sampler")


def _normalise_meta(meta: dict) -> dict:
    out = dict(meta)
    for alias, key in _META_ALIASES.items():
        if alias in out and key not in out:
            out[key] = out[alias]
    return out


def _matches(key: Any, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(str(key), p) for p in patterns)


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read."""


class ResumeMismatchError(CheckpointError):
    """The checkpoint's data-loader state cannot be used with the current run's layout."""


def step_dirname(step: int) -> str:
    return f"step-{int(step):08d}"


def _is_url(root: str) -> bool:
    return "://" in str(root)


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized()


@dataclasses.dataclass
class SaveResult:
    """Timing and outcome of one save. ``total_s``/``committed`` are filled when the write commits."""

    step: int
    path: str
    started_at: float  # wall clock (time.time()) when save() was called
    blocking_s: float = 0.0  # time save() held the caller (includes wait_prev_s)
    wait_prev_s: float = 0.0  # part of blocking_s spent waiting for the previous async save
    total_s: float | None = None  # save() call -> COMMIT written (rank 0) / write finished (others)
    committed: bool = False
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class ResumeCheck:
    """What :meth:`CheckpointManager.check_resume` decided."""

    step: int
    path: str
    saved_metadata: dict
    exclude: tuple[str, ...] = ()  # state keys not to load (the data-loader entry on a reset)
    mismatches: tuple[str, ...] = ()  # human-readable differences that were accepted by a reset


class _Pending:
    def __init__(self, result: SaveResult, future: Future | None, metadata: dict, t0: float):
        self.result = result
        self.future = future
        self.metadata = metadata
        self.t0 = t0
        self.lock = threading.Lock()
        self.finalized = False
        self.exc: BaseException | None = None


class CheckpointManager:
    """DCP checkpoints with async save, a commit marker written last and ``keep_n_latest`` pruning.

    Args:
        root: local folder or fsspec URL (``file://``, ``memory://``, ``gs://``, ``s3://`` ...).
        keep_n_latest: committed checkpoints to keep (``<= 0`` keeps all).
        async_save: write in a background thread (``dcp.async_save``); ``False`` saves synchronously.
        process_group: group for the save/load collectives. Default: a new gloo group over all ranks
            (created here, so construct the manager on every rank), which keeps the background writer
            off the trainer's NCCL/gloo default group.
        data_state_keys: fnmatch patterns of the entries holding data-loader/sampler state, at the top level
            of ``state`` or one level inside a Stateful's/dict's state (default
            :data:`DEFAULT_DATA_STATE_KEYS`). These are what a ``reset_data_state`` resume leaves out.
        on_commit: called with the :class:`SaveResult` once a checkpoint is committed (rank 0), from the
            writer thread or from ``wait()``; e.g. ``GoodputTracker.record_checkpoint_committed``.
    """

    def __init__(
        self,
        root: str,
        keep_n_latest: int,
        async_save: bool = True,
        process_group: Any = None,
        *,
        data_state_keys: Iterable[str] = DEFAULT_DATA_STATE_KEYS,
        on_commit: Callable[[SaveResult], None] | None = None,
        storage_options: dict | None = None,
    ):
        self.root = str(root)
        self.keep_n_latest = int(keep_n_latest)
        self.async_save = bool(async_save)
        # On CUDA, one long-lived FileSystemWriter with cache_staged_state_dict=True stages into pinned host
        # buffers allocated on the first save and reused after (a D2H copy at ~20 GB/s); save() blocks for that
        # copy only. A fresh writer per save stages into new pageable memory, which blocked ~22 s for a
        # 1.25 B-parameter model + AdamW (benchmarks/README.md). DCP's DefaultStager pinned path fails on
        # torch 2.11 DTensor state, so it is not used.
        self._pinned_writer = None  # created below, once the root is resolved
        self._staging = None
        self.data_state_keys = tuple(data_state_keys)
        self.on_commit = on_commit
        self.storage_options = dict(storage_options or {})
        self.is_url = _is_url(self.root)
        if self.is_url:
            from fsspec.core import url_to_fs

            self.fs, self._root_path = url_to_fs(self.root, **self.storage_options)
        else:
            self.fs, self._root_path = None, os.path.abspath(self.root)
        if self.async_save and torch.cuda.is_available() and not self.is_url:
            self._pinned_writer = dcp.FileSystemWriter(self._root_path, cache_staged_state_dict=True)
        if _dist_on():
            self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
            # A dedicated CPU group: async save needs a CPU backend, and a background thread must not
            # issue collectives on the group the training step is using.
            self.pg = process_group if process_group is not None else dist.new_group(backend="gloo")
        else:
            self.rank, self.world_size, self.pg = 0, 1, None
        self._pending: _Pending | None = None
        self.history: list[SaveResult] = []
        self._lock = threading.Lock()
        if self.rank == 0:
            self._makedirs(self._root_path)

    # ------------------------------------------------------------------ paths and small file I/O
    def path_for(self, step: int) -> str:
        """The folder (or URL) of the checkpoint for ``step``."""
        if self.is_url:
            return self.root.rstrip("/") + "/" + step_dirname(step)
        return os.path.join(self._root_path, step_dirname(step))

    def _fs_path(self, step: int) -> str:
        # path in the filesystem's own namespace (no protocol) for fsspec calls
        if self.is_url:
            return self._root_path.rstrip("/") + "/" + step_dirname(step)
        return os.path.join(self._root_path, step_dirname(step))

    def _join(self, base: str, name: str) -> str:
        return base.rstrip("/") + "/" + name if self.is_url else os.path.join(base, name)

    def _makedirs(self, path: str) -> None:
        if self.is_url:
            self.fs.makedirs(path, exist_ok=True)
        else:
            os.makedirs(path, exist_ok=True)

    def _exists(self, path: str) -> bool:
        return self.fs.exists(path) if self.is_url else os.path.exists(path)

    def _write_text(self, path: str, text: str) -> None:
        data = text.encode()
        if self.is_url:
            # object stores: a single PUT is atomic per object; the COMMIT marker orders the set
            with self.fs.open(path, "wb") as f:
                f.write(data)
            return
        write_bytes_atomic(path, data, fsync=True)
        _fsync_dir(os.path.dirname(path))

    def _read_text(self, path: str) -> str:
        if self.is_url:
            with self.fs.open(path, "rb") as f:
                return f.read().decode()
        with open(path, encoding="utf-8") as f:
            return f.read()

    def _rmtree(self, path: str) -> None:
        if self.is_url:
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)
        else:
            shutil.rmtree(path, ignore_errors=True)

    def _list_steps(self) -> list[tuple[int, bool]]:
        """(step, committed) for every ``step-*`` folder, ascending. Reads storage (call on one rank)."""
        try:
            if self.is_url:
                names = [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self._root_path, detail=False)]
            else:
                names = os.listdir(self._root_path)
        except FileNotFoundError:
            return []
        out = []
        for n in names:
            m = _STEP_DIR.match(n)
            if m:
                step = int(m.group(1))
                out.append((step, self._exists(self._join(self._fs_path(step), COMMIT_MARKER))))
        return sorted(out)

    def _bcast(self, obj: Any) -> Any:
        if self.pg is None:
            return obj
        box = [obj if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=dist.get_global_rank(self.pg, 0), group=self.pg)
        return box[0]

    def _barrier(self) -> None:
        if self.pg is not None:
            dist.barrier(group=self.pg)

    # ------------------------------------------------------------------ storage writers/readers
    def _storage_writer(self, path: str):
        """DCP writer for ``path``. Overridable (tests use a gated writer)."""
        if self.is_url:
            from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

            return FsspecWriter(path, **self.storage_options)
        return dcp.FileSystemWriter(path)

    def _storage_reader(self, path: str):
        if self.is_url:
            from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

            return FsspecReader(path, **self.storage_options)
        return dcp.FileSystemReader(path)

    # ------------------------------------------------------------------ save
    def save(self, step: int, state: dict[str, Any], metadata: dict | None = None) -> SaveResult:
        """Save ``state`` as checkpoint ``step`` (collective: every rank calls it with the same step).

        Returns as soon as the state is staged in CPU memory when ``async_save``; the write, the
        ``metadata.json`` and the ``COMMIT`` marker follow in the background. ``metadata`` should carry
        ``dp_size`` and ``data_rev`` (checked on resume); ``step``, ``world_size``, ``time`` and
        ``soraflow_version`` are filled here (``dp_size`` defaults to the world size).
        """
        t0 = time.perf_counter()
        started = time.time()
        wait_prev = self.wait()
        path = self.path_for(step)
        meta = _normalise_meta(metadata or {})
        meta.update(step=int(step), world_size=self.world_size, soraflow_version=package_version())
        meta.setdefault("dp_size", self.world_size)
        meta.setdefault("data_rev", None)
        result = SaveResult(step=int(step), path=path, started_at=started, wait_prev_s=wait_prev)

        # Re-saving a step (after a rollback, or over a half-written folder from a crash): clear it first
        # so no stale COMMIT or data from another attempt survives.
        if self.rank == 0:
            fs_dir = self._fs_path(step)
            if self._exists(fs_dir):
                self._rmtree(fs_dir)
            self._makedirs(fs_dir)
        self._barrier()

        writer = self._pinned_writer if self._pinned_writer is not None else self._storage_writer(path)
        kwargs: dict[str, Any] = dict(storage_writer=writer, checkpoint_id=path)
        if self.pg is not None:
            kwargs["process_group"] = self.pg
        else:
            kwargs["no_dist"] = True
        try:
            if self.async_save:
                resp = dcp.async_save(state, **kwargs)
                self._staging = getattr(resp, "staging_completion", None)
                fut = getattr(resp, "upload_completion", resp)  # AsyncSaveResponse or Future
                pending = _Pending(result, fut, meta, t0)
                self._pending = pending
                result.blocking_s = time.perf_counter() - t0
                fut.add_done_callback(lambda _f, p=pending: self._finalize_quietly(p))
            else:
                dcp.save(state, **kwargs)
                pending = _Pending(result, None, meta, t0)
                self._pending = pending
                self._finalize(pending)
                self._pending = None
                result.blocking_s = time.perf_counter() - t0
        except Exception as e:
            result.error = f"{type(e).__name__}: {e}"
            self._pending = None
            raise CheckpointError(f"saving checkpoint step {step} to {path} failed: {e}") from e
        return result

    def prepare_staging(self, state: dict[str, Any]) -> float:
        """Allocate the pinned staging buffers now (one copy of `state` into them), so the first checkpoint
        does not pay for pinning. Call once the state has its final structure (after the first optimizer step,
        when AdamW has created its moments). No-op without CUDA. Returns the seconds taken."""
        if self._pinned_writer is None:
            return 0.0
        t0 = time.perf_counter()
        self._pinned_writer.stage({k: v.state_dict() if hasattr(v, "state_dict") else v for k, v in state.items()})
        return time.perf_counter() - t0

    def wait_staging(self) -> float:
        """Block until the last save's state is copied off the device (call before optimizer.step()).
        Returns the seconds waited; 0 when staging was synchronous or already done."""
        if self._staging is None:
            return 0.0
        t0 = time.perf_counter()
        self._staging.result()
        self._staging = None
        return time.perf_counter() - t0

    def _finalize_quietly(self, pending: _Pending) -> None:
        try:
            self._finalize(pending)
        except BaseException as e:  # surfaced again by wait()
            pending.exc = e
            log.error("checkpoint step %s failed: %s", pending.result.step, e)

    def _finalize(self, pending: _Pending) -> None:
        """After the DCP write: rank 0 writes metadata.json, then COMMIT, then prunes. Idempotent."""
        with pending.lock:
            if pending.finalized:
                if pending.exc is not None:
                    raise pending.exc
                return
            pending.finalized = True
            res = pending.result
            try:
                if pending.future is not None:
                    pending.future.result()  # raises the writer's exception
                if self.rank == 0:
                    d = self._fs_path(res.step)
                    meta = dict(pending.metadata, time=time.time())
                    self._write_text(self._join(d, METADATA_FILE), json.dumps(meta, indent=1, sort_keys=True))
                    self._write_text(
                        self._join(d, COMMIT_MARKER), json.dumps({"step": res.step, "time": meta["time"]}) + "\n"
                    )
                res.total_s = time.perf_counter() - pending.t0
                res.committed = True
                with self._lock:
                    self.history.append(res)
            except BaseException as e:
                res.error = f"{type(e).__name__}: {e}"
                pending.exc = CheckpointError(f"checkpoint step {res.step} ({res.path}) was not committed: {e}")
                pending.exc.__cause__ = e
                raise pending.exc
        if self.rank == 0:
            try:
                self.prune()
            except Exception as e:  # pruning is housekeeping; never fail a good save for it
                log.warning("pruning checkpoints under %s failed: %s", self.root, e)
            if self.on_commit is not None:
                try:
                    self.on_commit(res)
                except Exception as e:
                    log.warning("on_commit callback failed: %s", e)

    def wait(self) -> float:
        """Block until the in-flight async save (if any) is written and committed. Returns seconds waited.

        Raises :class:`CheckpointError` if that save failed. Call before exiting and before loading.
        """
        self.wait_staging()
        p = self._pending
        if p is None:
            return 0.0
        t0 = time.perf_counter()
        try:
            self._finalize(p)
        finally:
            self._pending = None
        return time.perf_counter() - t0

    @property
    def in_flight(self) -> bool:
        p = self._pending
        return p is not None and p.future is not None and not p.future.done()

    def close(self) -> float:
        return self.wait()

    def prune(self) -> list[int]:
        """Delete committed checkpoints older than the ``keep_n_latest`` newest committed ones (rank 0).

        Folders without the COMMIT marker are never touched (a save may be in flight, or a crash left it
        for inspection). Returns the steps deleted.
        """
        if self.rank != 0 or self.keep_n_latest <= 0:
            return []
        committed = [s for s, ok in self._list_steps() if ok]
        doomed = committed[: max(0, len(committed) - self.keep_n_latest)]
        for s in doomed:
            d = self._fs_path(s)
            # marker first: a crash mid-delete leaves an uncommitted (ignored) folder, never a
            # committed folder with missing files
            marker = self._join(d, COMMIT_MARKER)
            if self.is_url:
                self.fs.rm(marker)
            else:
                os.unlink(marker)
            self._rmtree(d)
        return doomed

    # ------------------------------------------------------------------ discovery, checks, load
    def committed_steps(self) -> list[int]:
        """Committed checkpoint steps, ascending (rank 0 reads, broadcast to all ranks: collective)."""
        steps = [s for s, ok in self._list_steps() if ok] if self.rank == 0 else None
        return self._bcast(steps)

    def latest_complete(self) -> int | None:
        """Newest step whose folder has the COMMIT marker, or None. Collective when distributed."""
        self.wait()
        steps = self.committed_steps()
        return steps[-1] if steps else None

    def read_metadata(self, step: int) -> dict:
        d = self._fs_path(step)
        if not self._exists(self._join(d, COMMIT_MARKER)):
            raise CheckpointError(f"checkpoint {self.path_for(step)} has no {COMMIT_MARKER} marker (incomplete)")
        try:
            return json.loads(self._read_text(self._join(d, METADATA_FILE)))
        except FileNotFoundError as e:
            raise CheckpointError(f"checkpoint {self.path_for(step)} has no {METADATA_FILE}") from e

    def check_resume(
        self, metadata_now: dict, step: int | None = None, *, reset_data_state: bool = False
    ) -> ResumeCheck:
        """Compare checkpoint ``step``'s recorded run layout (default: the newest committed step) with the
        current one. ``metadata_now`` holds ``dp_size`` (default: world size) and ``data_rev`` (or
        ``data_revision``).

        Refuses (:class:`ResumeMismatchError`) when ``dp_size`` or ``data_rev`` (and ``global_batch_size``
        when both record it) differ, because the data-loader state cannot be resharded or re-mapped. With
        ``reset_data_state=True`` it accepts, and the returned ``exclude`` holds the data-state patterns so
        model/optimizer load and the data loader starts afresh. Collective when distributed.
        """
        if metadata_now is None:
            raise TypeError("check_resume needs the current run's metadata (dp_size, data_rev)")
        self.wait()
        if step is None:
            step = self.latest_complete()
            if step is None:
                raise CheckpointError(f"no committed checkpoint under {self.root}")
        saved = self._bcast(self.read_metadata(step) if self.rank == 0 else None)
        saved = _normalise_meta(saved)
        now = _normalise_meta(metadata_now)
        now.setdefault("dp_size", self.world_size)
        mismatches = []
        for key in DATA_STATE_GUARDS:
            if key == "global_batch_size" and (key not in saved or key not in now):
                continue
            if key in now and saved.get(key) != now.get(key):
                mismatches.append(f"{key}: checkpoint has {saved.get(key)!r}, this run has {now.get(key)!r}")
        path = self.path_for(step)
        if mismatches and not reset_data_state:
            raise ResumeMismatchError(
                f"refusing to resume from {path}: "
                + "; ".join(mismatches)
                + f". The saved data-loader state ({', '.join(self.data_state_keys)}) is only valid for the same "
                "DP size, data revision and batch size. Resume with reset_data_state=True to load model/optimizer "
                "state and restart the data loader, or resume the run with its original layout."
            )
        exclude = self.data_state_keys if mismatches else ()
        if mismatches:
            log.warning("resuming from %s with the data-loader state reset (%s)", path, "; ".join(mismatches))
        return ResumeCheck(step=step, path=path, saved_metadata=saved, exclude=exclude, mismatches=tuple(mismatches))

    def load(
        self, step: int, state: dict[str, Any], *, exclude: Iterable[str] = (), reset_data_state: bool = False
    ) -> dict:
        """Load checkpoint ``step`` into ``state`` in place (Stateful entries get ``load_state_dict``).

        ``exclude``: fnmatch patterns of entries not to load, at the top level of ``state`` or one level
        inside an entry; ``reset_data_state=True`` adds the data-state patterns. A Stateful then receives its
        state without those keys. Collective when distributed. Returns the saved metadata.
        """
        self.wait()
        meta = self._bcast(self.read_metadata(step) if self.rank == 0 else None)
        pats = tuple(exclude) + (self.data_state_keys if reset_data_state else ())
        path = self.path_for(step)
        kwargs: dict[str, Any] = dict(storage_reader=self._storage_reader(path), checkpoint_id=path)
        if self.pg is not None:
            kwargs["process_group"] = self.pg
        else:
            kwargs["no_dist"] = True
        if not pats:
            to_load, post = state, []
        else:
            to_load, post = {}, []
            for k, v in state.items():
                if _matches(k, pats):
                    continue
                if isinstance(v, Stateful):
                    sd = v.state_dict()
                    sd = {kk: vv for kk, vv in sd.items() if not _matches(kk, pats)} if isinstance(sd, dict) else sd
                    to_load[k] = sd
                    post.append(("stateful", v, k))
                elif isinstance(v, dict):
                    to_load[k] = {kk: vv for kk, vv in v.items() if not _matches(kk, pats)}
                    post.append(("dict", v, k))
                else:
                    to_load[k] = v
        try:
            dcp.load(to_load, **kwargs)
        except Exception as e:
            raise CheckpointError(f"loading checkpoint {path} failed: {e}") from e
        for how, obj, k in post:
            if how == "stateful":
                obj.load_state_dict(to_load[k])
            else:
                obj.update(to_load[k])  # non-tensor values were replaced in the filtered copy
        for k, v in to_load.items():  # top-level non-container values
            if not isinstance(state.get(k), (dict, Stateful)):
                state[k] = v
        return meta


def _fsync_dir(d: str) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
