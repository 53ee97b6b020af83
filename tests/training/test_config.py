"""The training config is resolved and checked in the launching process: typos, types, ranges; the LR schedule."""

from __future__ import annotations

import json
import math

import pytest
import torch

from soraflow.training.config import ConfigError, apply_overrides, from_dict, resolve, validate
from soraflow.training.recipes import RECIPES, get_recipe
from soraflow.training.strategies import OptimConfig, set_lr


def test_unknown_key_names_the_nearest_one():
    with pytest.raises(ConfigError, match=r"unknown config key 'parallel\.sp_sizee'.*did you mean parallel\.sp_size\?"):
        resolve("tiny-cpu-stage1", {"parallel.sp_sizee": 2})
    with pytest.raises(ConfigError, match=r"unknown config key 'optimm'.*did you mean optim\?"):
        resolve("tiny-cpu-stage1", {"optimm.lr": 1e-4})


@pytest.mark.parametrize("key, value, message", [
    ("optim.lr", "1e-4", r"optim\.lr: expects a number, got '1e-4' \(str\)"),
    ("max_steps", "10", r"max_steps: expects an integer, got '10' \(str\)"),
    ("parallel.sp_size", 2.5, r"parallel\.sp_size: expects an integer, got 2\.5"),
    ("model.compile", 1, r"model\.compile: expects true or false"),
    ("optim.betas", [0.9], r"optim\.betas: expects 2 values"),
    ("checkpoint", 3, r"checkpoint: is a section"),
])
def test_wrong_types_are_rejected_with_the_key_path(key, value, message):
    with pytest.raises(ConfigError, match=message):
        resolve("tiny-cpu-stage1", {key: value})


def test_all_bad_overrides_are_reported_at_once():
    with pytest.raises(ConfigError) as err:
        resolve("tiny-cpu-stage1", {"optim.lr": "x", "max_steps": 2.5, "parallel.sp_sizee": 1})
    text = str(err.value)
    assert "optim.lr" in text and "max_steps" in text and "parallel.sp_sizee" in text


@pytest.mark.parametrize("key, value", [("optim.lr", 0.0), ("parallel.sp_size", 0), ("checkpoint.ckpt_every", 0),
                                        ("parallel.strategy", "zero3"), ("optim.warmup_steps", -1),
                                        ("optim.lr_milestones", [[100, 1e-5], [50, 1e-6]])])
def test_out_of_range_values_are_rejected(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        resolve("tiny-cpu-stage1", {key: value})


def test_ints_are_taken_for_floats_and_lists_for_tuples():
    cfg = resolve("tiny-cpu-stage1", {"optim.lr": 1, "optim.betas": [0.8, 0.9], "model.grad_ckpt_settings": None})
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.8, 0.9) and cfg.model.grad_ckpt_settings is None


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_is_valid_and_survives_the_trip_to_the_workers(name):
    cfg = validate(get_recipe(name))
    back = validate(from_dict(json.loads(json.dumps(cfg.to_dict(), default=str))))
    assert back.fingerprint() == cfg.fingerprint()
    assert json.loads(json.dumps(back.to_dict())) == json.loads(json.dumps(cfg.to_dict()))
    assert isinstance(back.optim.betas, tuple) and type(back.model.reinit) is tuple  # tuples come back as tuples
    assert back.data.bucket_config == cfg.data.bucket_config  # int frame keys and tuples, as the recipe wrote them


def test_run_dir_places_the_checkpoints():
    cfg = resolve("tiny-cpu-stage1", {}, run_dir="/r/x")
    assert (cfg.run_dir, cfg.checkpoint.dir) == ("/r/x", "/r/x/checkpoints")


def test_lr_schedule_is_open_soras_linear_warmup_then_milestones():
    o = OptimConfig(lr=5e-5, warmup_steps=4, warmup_start_lr=1e-6, lr_milestones=((10, 3e-5), (20, 1e-5)))
    # Open-Sora's LinearWarmupLR: initial + (step + 1) / (warmup + 1) * (lr - initial) while step < warmup
    for step in range(4):
        assert o.lr_at(step) == pytest.approx(1e-6 + (step + 1) / 5 * (5e-5 - 1e-6), rel=1e-12)
    assert [o.lr_at(s) for s in (4, 9, 10, 19, 20, 1000)] == [5e-5, 5e-5, 3e-5, 3e-5, 1e-5, 1e-5]
    assert OptimConfig(lr=2e-5).lr_at(0) == 2e-5  # no warmup: the recipes' constant lr


def test_set_lr_fills_tensor_and_float_lrs():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([p], lr=torch.tensor(1e-3))
    set_lr(opt, 5e-4)
    assert math.isclose(float(opt.param_groups[0]["lr"]), 5e-4, rel_tol=1e-6)
    opt2 = torch.optim.SGD([p], lr=1.0)
    set_lr(opt2, 0.25)
    assert opt2.param_groups[0]["lr"] == 0.25


def test_cli_rejects_a_typo_before_anything_starts(tmp_path, capsys):
    from soraflow.cli.main import main

    run_dir = tmp_path / "run"
    for scheduler in ("local_cwd", "kubernetes-dryrun"):
        code = main(["train", "--recipe", "tiny-cpu-stage1", "--run-dir", str(run_dir), "--scheduler", scheduler,
                     "--override", "parallel.sp_sizee=2"])
        out = capsys.readouterr()
        assert code == 2 and "did you mean parallel.sp_size" in out.err and out.out == ""
    assert not run_dir.exists()  # nothing was launched or written


def test_dry_run_prints_plain_yaml(capsys):
    import yaml

    from soraflow.cli.main import main

    assert main(["train", "--recipe", "stage1-256px-h200x8", "--nnodes", "2", "--nproc", "8",
                 "--gpus-per-node", "8", "--scheduler", "kubernetes-dryrun"]) == 0
    job = yaml.safe_load(capsys.readouterr().out)
    assert job["kind"] == "Job" and job["apiVersion"] == "batch.volcano.sh/v1alpha1"
    assert len(job["spec"]["tasks"]) == 2


def test_apply_overrides_sets_typed_values():
    cfg = apply_overrides(get_recipe("tiny-cpu-stage1"), {"optim.lr_milestones": [[5, 1e-4]]})
    assert cfg.optim.lr_milestones == ((5, 1e-4),)


def test_colossalai_settings_reach_the_strategy():
    from soraflow.training.trainer import strategy_kwargs

    cfg = resolve("tiny-cpu-stage1", {"parallel.strategy": "colossalai", "parallel.plugin": "hybrid",
                                      "parallel.sp_size": 2, "optim.grad_clip": 0.5})
    assert strategy_kwargs(cfg, "colossalai") == {"param_dtype": "fp32", "plugin": "hybrid", "sp_size": 2,
                                                  "max_norm": 0.5}
    assert strategy_kwargs(cfg, "fsdp2") == {"param_dtype": "fp32"}
    with pytest.raises(ConfigError, match="needs parallel.plugin=hybrid"):
        resolve("tiny-cpu-stage1", {"parallel.strategy": "colossalai", "parallel.sp_size": 2})
    with pytest.raises(ConfigError, match="parallel.plugin"):
        resolve("tiny-cpu-stage1", {"parallel.plugin": "zero3"})


def test_missing_colossalai_names_the_real_install():
    from soraflow.training.strategies import ColossalAIStrategy

    try:
        import colossalai  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match=r"pip install --no-deps colossalai==0\.5\.0"):
            ColossalAIStrategy()
    else:
        pytest.skip("colossalai is installed here")
