"""The training engine end to end on CPU: exact resume, strategies vs one process, fault recovery via torchx."""

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from soraflow.training.data.fixtures import make_video_table
from soraflow.training.recipes import get_recipe

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    specs = [{"kind": "video", "num_frames": 24, "height": 64, "width": 64, "fps": 24, "text": f"clip {i}"}
             for i in range(8)]
    return str(make_video_table(d, specs))


pytestmark = pytest.mark.usefixtures("isolated_soraflow_cache")


def _train_in_subprocess(table, run_dir, steps, ckpt_every=2, recipe="tiny-cpu-stage2", extra=()):
    cmd = [sys.executable, "-m", "soraflow.training.train", "--recipe", recipe, "--run-dir", str(run_dir),
           "--override", f"data.table={json.dumps(table)}", "--override", f"max_steps={steps}",
           "--override", f"checkpoint.ckpt_every={ckpt_every}", *extra]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True, timeout=300,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})


def _losses(run_dir):
    out = {}
    for line in (Path(run_dir) / "goodput_events.jsonl").read_text().splitlines():
        ev = json.loads(line)
        if ev.get("ev") == "step":
            out[ev["step"]] = ev["loss"]
    return out


def test_resume_is_exact(table, tmp_path):
    _train_in_subprocess(table, tmp_path / "straight", 6)
    _train_in_subprocess(table, tmp_path / "resumed", 4)  # stop at 4 (checkpoint at 4) ...
    _train_in_subprocess(table, tmp_path / "resumed", 6)  # ... a new process resumes and continues to 6
    straight, resumed = _losses(tmp_path / "straight"), _losses(tmp_path / "resumed")
    assert sorted(straight) == sorted(resumed) == [1, 2, 3, 4, 5, 6]
    assert straight == resumed  # bit-identical losses: data order, noise, timesteps, conditions, optimizer
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _micro_batches(steps):
    """Two same-shape micro-batches per step (one per rank), fixed inputs and targets."""
    from soraflow.models.mmdit import get_config
    from soraflow.models.packing import image_position_ids, pack, text_position_ids

    cfg = get_config("tiny")
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(steps):
        step = []
        for _ in range(2):
            lat = torch.randn(2, 16, 2, 4, 4, generator=g)
            img = pack(lat, 2)
            step.append((dict(img=img, img_ids=image_position_ids(2, 2, 4, 4, 2), txt=torch.randn(2, 5, 32, generator=g),
                              txt_ids=text_position_ids(2, 5), timesteps=torch.rand(2, generator=g),
                              y_vec=torch.randn(2, 32, generator=g), cond=torch.randn(2, img.shape[1], 68, generator=g)),
                         torch.randn(2, img.shape[1], 64, generator=g)))
        out.append(step)
    return out


def _strategy_losses(rank, world, strategy_name, port, steps, queue):
    import torch.distributed as dist

    from soraflow.models.mmdit import MMDiT, get_config
    from soraflow.training.strategies import OptimConfig, build_strategy

    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    net = MMDiT(get_config("tiny"))
    with torch.no_grad():  # non-zero cond_in so every parameter gets a gradient
        net.cond_in.weight.normal_(0, 0.02, generator=torch.Generator().manual_seed(1))
    strategy = build_strategy(strategy_name, param_dtype="fp32")
    model, opt = strategy.prepare(net, torch.device("cpu"), OptimConfig(lr=1e-3, eps=1e-8))
    losses = []
    for step in _micro_batches(steps):
        if world == 1:  # one process sees the global batch: both micro-batches, mean of their losses
            loss = sum(torch.nn.functional.mse_loss(model(**x), y) for x, y in step) / 2
        else:
            x, y = step[rank]
            loss = torch.nn.functional.mse_loss(model(**x), y)
        loss.backward()
        strategy.clip_grad_norm(model, 1.0)
        opt.step()
        opt.zero_grad()
        value = loss.detach().clone()
        if world > 1:
            dist.all_reduce(value)
            value /= world
        losses.append(float(value))
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        queue.put((losses, {k: v.numpy().copy() for k, v in full.items()}))  # by value, not shared memory
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


@pytest.mark.parametrize("strategy", ["fsdp2", "ddp"])
def test_data_parallel_strategies_match_one_process(strategy):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    _strategy_losses(0, 1, "single", 0, 3, q)
    ref_losses, ref_params = q.get()
    port = _free_port()
    procs = [ctx.Process(target=_strategy_losses, args=(r, 2, strategy, port, 3, q)) for r in range(2)]
    for p in procs:
        p.start()
    losses, params = q.get(timeout=240)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    # fp32 on CPU; the only difference is the order of the gradient reduction: 1e-5 relative.
    assert losses == pytest.approx(ref_losses, rel=1e-5)
    for k in ref_params:
        assert torch.allclose(torch.from_numpy(params[k]), torch.from_numpy(ref_params[k]), rtol=1e-4, atol=1e-6), k


def test_worker_killed_mid_run_recovers_from_last_checkpoint(table, tmp_path):
    """kill -9 of rank 1 after step 7 (checkpoints every 3): torchrun restarts the group, the trainer resumes at
    step 6, finishes at 10, and the goodput log shows the restart, the lost work and the recovery."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "soraflow.cli", "train", "--recipe", "tiny-cpu-stage1", "--run-dir", str(run_dir),
           "--nproc", "2", "--max-restarts", "1", "--override", f"data.table={json.dumps(table)}",
           "--override", "max_steps=10", "--override", "checkpoint.ckpt_every=3"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "SORAFLOW_CHAOS_KILL": "1:7"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (run_dir / ".chaos-killed-rank1-step7").exists()
    summary = json.loads((run_dir / "metrics.json").read_text())
    summary = summary.get("summary", summary)
    assert summary["restarts_total"] == 1
    assert summary["last_step"] == 10
    assert summary["recovery_seconds_last"] is not None and summary["recovery_seconds_last"] > 0
    # Lost work: step 7 ran after the step-6 checkpoint, so at most ckpt_every steps' time was wasted.
    step_time = max(ev["seconds"] for ev in map(json.loads, (run_dir / "goodput_events.jsonl").read_text().splitlines())
                    if ev.get("ev") == "step")
    assert 0 < summary["wasted_progress_seconds"] <= 3 * step_time + 1.0
    resumes = [json.loads(x) for x in (run_dir / "goodput_events.jsonl").read_text().splitlines()
               if '"resume"' in x]
    assert [r["step"] for r in resumes] == [6]
    assert load_file(str(run_dir / "model.safetensors"))


def test_kubernetes_job_spec_dry_run():
    from soraflow.training.launch import LaunchSpec, kubernetes_dryrun

    req = kubernetes_dryrun(LaunchSpec(recipe="stage1-256px-h200x8", run_dir="/ckpt/run1", nnodes=4,
                                       nproc_per_node=8, gpus_per_node=8, cpu=100, mem_mb=1_500_000,
                                       image="registry/soraflow-train-gpu@sha256:abc"), queue="training")
    job = req.resource
    assert job["apiVersion"] == "batch.volcano.sh/v1alpha1" and job["spec"]["schedulerName"] == "volcano"
    assert job["spec"]["queue"] == "training"
    tasks = job["spec"]["tasks"]
    assert len(tasks) == 4  # one task per node, gang-scheduled by Volcano
    assert job["spec"].get("minAvailable", sum(t.get("minAvailable", 1) for t in tasks)) == 4
    container = tasks[0]["template"].spec.containers[0]
    cmd = " ".join(container.command + (container.args or []))
    assert "--max_restarts 3" in cmd and "--nproc_per_node 8" in cmd and "--nnodes 4" in cmd
    # the workers get the config the launcher resolved and validated, as one argument
    import shlex

    argv = shlex.split((container.args or container.command)[-1])
    cfg = json.loads(argv[argv.index("--config-json") + 1])
    assert argv[argv.index("-m", argv.index("torch.distributed.run")) + 1] == "soraflow.training.train"
    assert cfg["name"] == "stage1-256px-h200x8" and cfg["run_dir"] == "/ckpt/run1"
    assert cfg["checkpoint"]["dir"] == "/ckpt/run1/checkpoints" and cfg["metrics_port"] == 9464
    assert container.image == "registry/soraflow-train-gpu@sha256:abc"
    assert container.resources.limits["nvidia.com/gpu"] == "8"
    env = {e.name: e.value for e in container.env}
    assert env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1" and env["NCCL_NVLS_ENABLE"] == "0"


def test_incompatible_stage_inputs_are_named(table, tmp_path):
    from soraflow.training.trainer import Trainer

    cfg = get_recipe("tiny-cpu-stage1")
    cfg.data.table, cfg.run_dir, cfg.checkpoint.dir = table, str(tmp_path), str(tmp_path / "c")
    cfg.ae.kind = "dcae"  # 8 latent channels into a DiT built for 16 x 2^2
    with pytest.raises(ValueError, match="takes 64 input channels .* gives 8 latent channels"):
        Trainer(cfg)


def test_one_process_strategy_keeps_the_recipes_precision():
    from soraflow.training.trainer import effective_strategy

    assert effective_strategy("fsdp2", 8, "cuda") == "fsdp2"
    assert effective_strategy("fsdp2", 1, "cuda") == "master"  # one GPU: FSDP2's precision, no FSDP2 copies
    assert effective_strategy("fsdp2", 1, "cpu") == "single"
    assert effective_strategy("ddp", 1, "cuda") == "single"
    assert effective_strategy("colossalai", 1, "cuda") == "colossalai"


def test_single_device_keeps_fp32_master_weights_and_gradients():
    """Before: a bf16 recipe run as one process cast the parameters to bf16 (no master weights), so AdamW steps
    below bf16's resolution were lost. Now parameters and gradients stay fp32; on CUDA the forward autocasts."""
    from soraflow.training.strategies import OptimConfig, build_strategy

    strategy = build_strategy("single", param_dtype="bf16")
    model, opt = strategy.prepare(torch.nn.Linear(4, 4), torch.device("cpu"), OptimConfig(lr=1e-6))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    before = model.weight.detach().clone()
    model(torch.ones(2, 4)).sum().backward()
    opt.step()
    step = (model.weight.detach() - before).abs()
    assert model.weight.grad.dtype == torch.float32
    # AdamW's first step moves every weight by lr (1e-6): invisible in bf16 (spacing 2^-8 near 1), kept in fp32.
    torch.testing.assert_close(step, torch.full_like(step, 1e-6), rtol=2e-2, atol=0)


@pytest.mark.slow  # inductor compiles C++ for the tiny blocks' forward and backward: about a minute on 2 cores
def test_compiled_training_follows_the_eager_losses(table, tmp_path):
    _train_in_subprocess(table, tmp_path / "eager", 3, ckpt_every=10)
    _train_in_subprocess(table, tmp_path / "compiled", 3, ckpt_every=10, extra=("--override", "model.compile=true"))
    eager, compiled = _losses(tmp_path / "eager"), _losses(tmp_path / "compiled")
    assert sorted(eager) == sorted(compiled) == [1, 2, 3]
    config = json.loads((tmp_path / "compiled" / "config.json").read_text())
    assert config["model"]["compile"] is True
    # fp32 on CPU: inductor reassociates sums, nothing else changes
    assert [compiled[s] for s in (1, 2, 3)] == pytest.approx([eager[s] for s in (1, 2, 3)], rel=1e-4)


def _rope_dtype_in_blocks(queue):
    import torch.distributed as dist

    from soraflow.models.mmdit import MMDiT, get_config
    from soraflow.training.strategies import FSDP2Strategy, OptimConfig

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    cfg = get_config("tiny")
    model, _ = FSDP2Strategy("bf16", "fp32").prepare(MMDiT(cfg), torch.device("cpu"), OptimConfig())
    seen = []
    model.double_blocks[0].register_forward_pre_hook(lambda m, args, kwargs: seen.append(args[3][0].dtype),
                                                     with_kwargs=True)
    from soraflow.models.packing import image_position_ids, text_position_ids

    b, n = 1, 2 * 2 * 3
    model(img=torch.randn(b, n, cfg.in_channels), img_ids=image_position_ids(b, 2, 4, 6, 2),
          txt=torch.randn(b, 5, cfg.context_in_dim), txt_ids=text_position_ids(b, 5),
          timesteps=torch.rand(b), y_vec=torch.randn(b, cfg.vec_in_dim)).float().sum().backward()
    queue.put([str(d) for d in seen])
    dist.destroy_process_group()


def test_fsdp2_blocks_get_the_rope_tables_in_fp32():
    """The root casts the model inputs to bf16; the blocks must not cast again, or the fp32 RoPE tables become
    bf16 (and checkpoint recomputation, where FSDP skips that cast, sees different tensors)."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_rope_dtype_in_blocks, args=(q,))
    p.start()
    seen = q.get(timeout=120)
    p.join(timeout=60)
    assert seen == ["torch.float32"]


def _close_keeps_callers_group(table, run_dir, queue):
    import torch.distributed as dist

    from soraflow.training.config import apply_overrides
    from soraflow.training.trainer import Trainer

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    cfg = apply_overrides(get_recipe("tiny-cpu-stage1"), {"data.table": table, "run_dir": run_dir,
                                                          "checkpoint.dir": run_dir + "/ckpt"})
    Trainer(cfg).close()
    queue.put(dist.is_initialized())


def test_trainer_close_leaves_the_callers_process_group(table, tmp_path):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_close_keeps_callers_group, args=(table, str(tmp_path / "run"), q))
    p.start()
    still_there = q.get(timeout=180)
    p.join(timeout=60)
    assert still_there is True


@pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="model.fp8 needs the [fp8] extra")
def test_fp8_recipe_flag_trains_and_exports_the_bf16_layout(table, tmp_path):
    """`model.fp8=tensorwise` converts the blocks' linears in the trainer (emulated on a CPU); the run's export
    has exactly the keys and shapes of the bf16 run's, and its losses follow it (width 64: a few %)."""
    _train_in_subprocess(table, tmp_path / "bf16", 2, ckpt_every=10)
    _train_in_subprocess(table, tmp_path / "fp8", 2, ckpt_every=10, extra=("--override", "model.fp8=tensorwise"))
    config = json.loads((tmp_path / "fp8" / "config.json").read_text())
    assert config["model"]["fp8"] == "tensorwise"
    a = load_file(str(tmp_path / "bf16" / "model.safetensors"))
    b = load_file(str(tmp_path / "fp8" / "model.safetensors"))
    assert sorted(a) == sorted(b) and all(a[k].shape == b[k].shape and a[k].dtype == b[k].dtype for k in a)
    bf16, fp8 = _losses(tmp_path / "bf16"), _losses(tmp_path / "fp8")
    assert sorted(fp8) == [1, 2]
    assert [fp8[s] for s in (1, 2)] == pytest.approx([bf16[s] for s in (1, 2)], rel=0.05)


def _guard_states(table, run_dir, stops, queue):
    """Train `run_dir` to each step of `stops` in turn (a new Trainer each time: a restart that resumes from the
    last checkpoint) and report the loss guard's state right after each resume and at the end of each leg."""
    from soraflow.training.config import apply_overrides
    from soraflow.training.trainer import Trainer

    out = []
    for stop in stops:
        cfg = apply_overrides(get_recipe("tiny-cpu-stage2"), {
            "data.table": table, "run_dir": run_dir, "checkpoint.dir": run_dir + "/ckpt", "max_steps": stop,
            "checkpoint.ckpt_every": 2, "recovery.spike_warmup": 1, "recovery.spike_window": 3})
        trainer = Trainer(cfg)
        try:
            resumed = trainer.guard.state_dict()
            trainer.train()
            out.append({"resumed": resumed, "end": trainer.guard.state_dict()})
        finally:
            trainer.close()
    queue.put(out)


def _run_guard_legs(table, run_dir, stops):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_guard_states, args=(table, str(run_dir), stops, q))
    p.start()
    out = q.get(timeout=600)
    p.join(timeout=60)
    return out


def test_resumed_run_keeps_the_loss_guard_state(table, tmp_path):
    """The guard's window (recent ok losses, how many it has seen) rides in the checkpoint: a run stopped at
    step 4 and resumed to 6 ends with the guard of a run that went to 6 in one go. A window of 3 so that the
    resumed leg (2 steps) alone could not fill it."""
    (straight,) = _run_guard_legs(table, tmp_path / "straight", [6])
    first, second = _run_guard_legs(table, tmp_path / "resumed", [4, 6])
    assert straight["resumed"] == {"history": [], "seen_ok": 0}  # a fresh run starts empty
    assert second["resumed"] == first["end"]  # what step 4 saved is what the restart loaded
    assert first["end"]["seen_ok"] == 4 and len(first["end"]["history"]) == 3
    assert second["end"] == straight["end"]
    assert straight["end"]["seen_ok"] == 6
