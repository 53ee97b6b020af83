"""Model files are byte-deterministic: the same tensors and metadata give the same bytes in any process."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open

from soraflow.common.safetensors_io import save_safetensors

ROOT = Path(__file__).resolve().parents[1]
SAVE = """
import sys, torch
from soraflow.common.safetensors_io import save_safetensors
g = torch.Generator().manual_seed(0)
t = {f"blocks.{i}.w": torch.randn(3, 4, generator=g) for i in range(6)}
t["scale"] = torch.ones(2, dtype=torch.bfloat16)
meta = {"config": "tiny", "step": "10", "recipe": "tiny-cpu-stage1", "stage": "dit_stage1", "x": "y"}
save_safetensors(t, sys.argv[1], metadata={k: meta[k] for k in sys.argv[2].split(",")})  # insertion order varies
"""


def test_same_tensors_same_bytes_across_processes(tmp_path):
    digests = set()
    for i, order in enumerate(["config,step,recipe,stage,x", "stage,x,recipe,config,step", "x,step,stage,config,recipe"]):
        out = tmp_path / f"m{i}.safetensors"
        subprocess.run([sys.executable, "-c", SAVE, str(out), order], check=True, cwd=ROOT,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
        digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
    assert len(digests) == 1


def test_file_reads_back_with_its_metadata(tmp_path):
    t = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.zeros(4, dtype=torch.int64)}
    path = save_safetensors(t, tmp_path / "x.safetensors", metadata={"stage": "dit_stage1", "config": "tiny"})
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"stage": "dit_stage1", "config": "tiny"}
        assert sorted(f.keys()) == ["a", "b"]
        assert torch.equal(f.get_tensor("b"), t["b"]) and torch.equal(f.get_tensor("a"), t["a"])
