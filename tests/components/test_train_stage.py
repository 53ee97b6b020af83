"""The stage chain stage1 -> stage2 -> stage3 -> distill (+ vae_train for the distill autoencoder) on CPU, each
stage initialised from the previous export, and `run_stage` end to end through torchx."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from soraflow.components.train_stage import run_stage
from soraflow.components.train_stage.stage import _validate, stage_overrides
from soraflow.training.config import apply_overrides
from soraflow.training.data.fixtures import make_video_table
from soraflow.training.recipes import DISTILL_REINIT, get_recipe


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    specs = [{"kind": "video", "num_frames": 24, "height": 128, "width": 128, "fps": 24, "text": f"clip {i}"}
             for i in range(6)]
    return str(make_video_table(d, specs))


pytestmark = pytest.mark.usefixtures("isolated_soraflow_cache")


def _train(stage, recipe, run_dir, table, init=None, ae=None, steps=2):
    """The in-process twin of run_stage: same validation and input wiring, no torchx (keeps the test short).
    Returns (initial weights as the stage saw them, path of the export)."""
    from soraflow.training.trainer import Trainer

    _, table, init_p, ae_p = _validate(stage, recipe, table, init, ae, {"max_steps": steps})
    cfg = get_recipe(recipe)
    cfg.run_dir, cfg.checkpoint.dir = str(run_dir), str(Path(run_dir) / "checkpoints")
    apply_overrides(cfg, stage_overrides(stage, table, init_p, ae_p, {"max_steps": steps}))
    trainer = Trainer(cfg)
    start = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    try:
        trainer.train()
    finally:
        trainer.close()
    return start, Path(run_dir) / "model.safetensors"


@pytest.fixture(scope="module")
def chain(table, tmp_path_factory):
    root = tmp_path_factory.mktemp("chain")
    out = {}
    out["s1"] = _train("dit_stage1", "tiny-cpu-stage1", root / "s1", table)
    out["s2"] = _train("dit_stage2", "tiny-cpu-stage2", root / "s2", table, init=str(out["s1"][1]))
    out["s3"] = _train("dit_stage3", "tiny-cpu-stage3", root / "s3", table, init=str(out["s2"][1]))
    out["vae"] = _train("vae_train", "tiny-cpu-vae", root / "vae", table, steps=4)
    out["distill"] = _train("distill", "tiny-cpu-distill", root / "distill", table, init=str(out["s3"][1]),
                            ae=str(out["vae"][1]))
    return out


def _under(key, prefixes):
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def test_each_stage_starts_from_the_previous_export(chain):
    s1 = load_file(str(chain["s1"][1]))
    start2 = chain["s2"][0]
    # stage 1 is text-to-video (no cond_in): stage 2 keeps its zero-initialised cond_in, loads the rest
    assert set(start2) - set(s1) == {"cond_in.weight", "cond_in.bias"}
    assert all(torch.equal(start2[k], s1[k]) for k in s1)
    assert not start2["cond_in.weight"].any()
    s2, start3 = load_file(str(chain["s2"][1])), chain["s3"][0]
    assert start3.keys() == s2.keys() and all(torch.equal(start3[k], s2[k]) for k in s2)
    assert any(not torch.equal(s2[k], s1[k]) for k in s1)  # stage 2 really trained


def test_distill_keeps_teacher_blocks_and_reinitialises_io_layers(chain):
    teacher, start = load_file(str(chain["s3"][1])), chain["distill"][0]
    assert start.keys() == teacher.keys()
    fresh = [k for k in start if _under(k, DISTILL_REINIT)]
    assert sorted(fresh) == sorted(["img_in.weight", "img_in.bias", "cond_in.weight", "cond_in.bias",
                                    "final_layer.linear.weight", "final_layer.linear.bias"])
    for k in start:
        if k in fresh:
            assert start[k].shape != teacher[k].shape or not torch.equal(start[k], teacher[k]), k
        else:
            assert torch.equal(start[k], teacher[k]), k  # every shared block weight equals the teacher's


def test_distill_losses_fall_and_samples_written(chain):
    run = chain["distill"][1].parent
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["stage"] == "distill" and cfg["ae"]["kind"] == "dcae" and cfg["ae"]["path"].endswith("safetensors")
    assert sorted(p.name for p in (run / "samples").glob("*.mp4")) == ["step-000002.mp4"]


def test_run_stage_end_to_end_through_torchx(chain, table, tmp_path):
    out = run_stage("distill", recipe="tiny-cpu-distill", run_dir=str(tmp_path / "d"), data_table=table,
                    init_from=str(chain["s3"][1]), autoencoder=str(chain["vae"][1]),
                    overrides={"max_steps": 2, "samples.every": 1})
    assert out.steps == 2 and out.final_loss is not None
    exported = load_file(out.model_path)
    assert exported["img_in.weight"].shape[1] == 8  # 8 tiny DC-AE channels x patch 1
    metrics = json.loads(Path(out.metrics_path).read_text())
    assert [s for s, _ in metrics["losses"]] == [1, 2] and metrics["goodput"]["last_step"] == 2 and metrics["goodput"]["goodput_ratio"] > 0
    card = Path(out.card_path).read_text()
    for field in ("distill", "tiny-cpu-distill", str(chain["s3"][1]), "data revision", "final loss", "tokens",
                  "img_in, cond_in, final_layer.linear"):
        assert field in card
    assert json.loads(Path(out.config_path).read_text())["model"]["from_pretrained"] == str(chain["s3"][1])
    assert sorted(p.name for p in Path(out.samples_dir).glob("*.mp4")) == ["step-000001.mp4", "step-000002.mp4"]


def test_inputs_are_checked_before_launch(chain, table, tmp_path):
    with pytest.raises(ValueError, match="'tiny-cpu-stage2' is a dit_stage2 recipe, not a distill one"):
        run_stage("distill", recipe="tiny-cpu-stage2", run_dir=str(tmp_path), data_table=table)
    with pytest.raises(FileNotFoundError, match="data_table: .*nope.csv does not exist"):
        run_stage("dit_stage1", recipe="tiny-cpu-stage1", run_dir=str(tmp_path), data_table=str(tmp_path / "nope.csv"))
    with pytest.raises(FileNotFoundError, match="init_from: .*missing.safetensors does not exist"):
        run_stage("dit_stage2", recipe="tiny-cpu-stage2", run_dir=str(tmp_path), data_table=table,
                  init_from=str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="distill starts from the stage-3 weights"):
        run_stage("distill", recipe="tiny-cpu-distill", run_dir=str(tmp_path), data_table=table)
    with pytest.raises(ValueError, match="is a vae_train export .* dit_stage2 starts from a dit_stage1"):
        run_stage("dit_stage2", recipe="tiny-cpu-stage2", run_dir=str(tmp_path), data_table=table,
                  init_from=str(chain["vae"][1]))
    with pytest.raises(ValueError, match="autoencoder: .* is a dit_stage3 export, not autoencoder weights"):
        run_stage("distill", recipe="tiny-cpu-distill", run_dir=str(tmp_path), data_table=table,
                  init_from=str(chain["s3"][1]), autoencoder=str(chain["s3"][1]))
    with pytest.raises(ValueError, match="stage 'dit_stage9' is not one of"):
        run_stage("dit_stage9", recipe="tiny-cpu-stage1", run_dir=str(tmp_path), data_table=table)


def test_checkpoint_of_another_config_is_named(chain, table, tmp_path):
    """A stage-2 export loaded into a model of another width stops with the mismatching keys named."""
    from soraflow.models.mmdit.checkpoint import CheckpointMismatch
    from soraflow.training.trainer import Trainer

    cfg = get_recipe("tiny-cpu-stage3")
    cfg.run_dir, cfg.checkpoint.dir, cfg.data.table = str(tmp_path), str(tmp_path / "c"), table
    cfg.model.from_pretrained = str(chain["s2"][1])
    cfg.model.overrides = {"mlp_ratio": 2.0}  # another config: every MLP has another shape
    with pytest.raises(CheckpointMismatch, match="shape mismatches: .*mlp"):
        Trainer(cfg)


def test_a_failed_stage_names_the_workers_own_error(tmp_path):
    """torchrun's summary says only 'exitcode 1'; the message must carry the worker's traceback."""
    from soraflow.components.train_stage.stage import _failure_tail

    app = tmp_path / "torchx" / "app"
    worker = app / "torchelastic" / "trainer" / "app_x" / "attempt_0" / "0" / "stderr.log"
    worker.parent.mkdir(parents=True)
    worker.write_text("step 0 held-out\nTraceback (most recent call last):\n  File \"trainer.py\", line 1\n"
                      "RuntimeError: loss guard tripped (spike) at step 21 and no checkpoint exists\n")
    summary = app / "trainer" / "0" / "stderr.log"
    summary.parent.mkdir(parents=True)
    summary.write_text("soraflow.training.train FAILED\n  exitcode  : 1 (pid: 2988)\n")
    tail = _failure_tail(tmp_path)
    assert "RuntimeError: loss guard tripped (spike)" in tail
    assert tail.index("RuntimeError") < tail.index("exitcode  : 1")
    summary.unlink()
    worker.write_text("no traceback here\n")
    assert _failure_tail(tmp_path) == "no traceback here"
