"""The whole generation path on one GPU with random weights of the real sizes (timing does not depend on them):
T5-XXL + CLIP-L text encoding, the DiT sampler, the autoencoder decode, writing the file.

Cases (issue 10):
  256     opensora2,    256x256, 129 frames, text-to-video, HunyuanVideo VAE   (reference 60 s)
  768     opensora2,    768x768, 129 frames, HunyuanVideo VAE                  (reference 1656 s)
  hc768   opensora2-hc, 768x768, 128 frames, Video DC-AE                       (reference 162 s)

`--dit-steps K` (< 50) times K sampler steps after warm-up and projects the 50-step time as
text + 50 x (measured time per step) + decode + write; the record says which figures are projected.

`--offload`: text encoders and autoencoder wait on the CPU and visit the GPU for their phase; the record has the
peak memory of every phase (`peak_memory_by_phase_gb`).

`--fp8`: after the bf16 run, the same pipeline's DiT is converted to e4m3 block linears (training/parallel/fp8.py),
warmed up again and run on the same prompt and seed; the record adds its times and the quality cost: relative
error of the final latent vs bf16, PSNR of the decoded uint8 frames vs bf16 (per frame and over the video).

Usage (CUDA): python benchmarks/bench_generate.py --case 256 --tokenizers .gl/tok --out gen.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from soraflow.inference.generate import GenerateOptions, build_pipeline, generate  # noqa: E402
from soraflow.models.mmdit import mmdit_forward_flops  # noqa: E402

CASES = {
    "256": dict(model="opensora2", num_frames=129, height=256, width=256, reference_s=60.0, target_s=35.0),
    "768": dict(model="opensora2", num_frames=129, height=768, width=768, reference_s=1656.0, target_s=1100.0),
    "hc768": dict(model="opensora2-hc", num_frames=128, height=768, width=768, reference_s=162.0, target_s=100.0),
}
MATMUL_CEILING = 765e12  # bf16 8192^3 on this H100 (design §7)


def write_random_text_encoders(root: Path, tokenizers: Path) -> tuple[Path, Path]:
    """T5-XXL encoder and CLIP-L text model of the real sizes with random bf16 weights, plus small tokenizers
    (the sequence lengths, 512 and 77 tokens, are what the time depends on)."""
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    t5_dir, clip_dir = root / "t5", root / "clip"
    if (t5_dir / "config.json").exists() and (clip_dir / "config.json").exists():
        return t5_dir, clip_dir
    t5_cfg = T5Config(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, vocab_size=32128,
                      feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, is_encoder_decoder=False,
                      use_cache=False, tie_word_embeddings=False)
    clip_cfg = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                              max_position_embeddings=77, projection_dim=768, vocab_size=49408)
    for cls, cfg, out, tok in ((T5EncoderModel, t5_cfg, t5_dir, tokenizers / "t5"),
                               (CLIPTextModel, clip_cfg, clip_dir, tokenizers / "clip")):
        with torch.device("cuda"):
            model = cls(cfg).to(torch.bfloat16)
        model.save_pretrained(out, safe_serialization=True)
        del model
        for f in tok.iterdir():
            if f.name != "config.json":
                shutil.copy2(f, out / f.name)
    torch.cuda.empty_cache()
    return t5_dir, clip_dir


def _times(result, dit_steps: int):
    s = dict(result.seconds)
    s.pop("load", None)
    dit_per_step = s["dit"] / dit_steps
    projected = {**s, "dit": dit_per_step * 50}
    return s, projected, sum(s.values()), sum(projected.values()), dit_per_step


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def quality_cost(ref, other) -> dict:
    """Output difference of `other` vs `ref` on the same seed: final latent and decoded uint8 frames."""
    la, lb = ref.latents[0].double(), other.latents[0].double()
    fa, fb = ref.frames[0].numpy(), other.frames[0].numpy()
    per_frame = [psnr(fa[i], fb[i]) for i in range(fa.shape[0])]
    return dict(latent_rel_error=float((lb - la).norm() / la.norm()),
                latent_max_abs_error=float((lb - la).abs().max()),
                psnr_db=psnr(fa, fb), psnr_db_min_frame=min(per_frame), psnr_db_first_frame=per_frame[0],
                frames_mean_abs_diff=float(np.abs(fa.astype(np.int16) - fb.astype(np.int16)).mean()))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", choices=sorted(CASES), default="256")
    ap.add_argument("--tokenizers", default=".gl/tok")
    ap.add_argument("--encoders-dir", default="/tmp/soraflow-random-encoders")
    ap.add_argument("--dit-steps", type=int, default=50, help="sampler steps actually run (projected to 50)")
    ap.add_argument("--offload", action="store_true")
    ap.add_argument("--fp8", action="store_true", help="also run the FP8 DiT and measure its cost vs bf16")
    ap.add_argument("--out")
    args = ap.parse_args()
    case = CASES[args.case]
    t5_dir, clip_dir = write_random_text_encoders(Path(args.encoders_dir), Path(args.tokenizers))
    common = dict(model=case["model"], random_init=True, t5=str(t5_dir), clip=str(clip_dir),
                  num_frames=case["num_frames"], height=case["height"], width=case["width"], progress=False,
                  out_dir="/tmp/soraflow-bench-videos", offload=args.offload)
    device = torch.device("cuda")
    t0 = time.perf_counter()
    pipe = build_pipeline(GenerateOptions(prompts=["warm up"], **common), device, torch.bfloat16)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    generate(GenerateOptions(prompts=["a warm up prompt"], steps=2, **common), pipeline=pipe)  # compile + graph
    warmup_s = time.perf_counter() - t0
    torch.cuda.reset_peak_memory_stats()
    prompt = "a red kite flies over a beach at sunset, waves rolling in, aerial camera slowly panning"
    result = generate(GenerateOptions(prompts=[prompt], steps=args.dit_steps, keep_outputs=args.fp8, **common),
                      pipeline=pipe)
    s, projected, total_measured, total_50, dit_per_step = _times(result, args.dit_steps)

    ae = pipe.ae
    lat_t = (case["num_frames"] - 1) // ae.time_compression + 1 if ae.is_causal else case["num_frames"] // ae.time_compression
    p = pipe.dit.config.patch_size
    n_img = lat_t * (case["height"] // ae.spatial_compression // p) * (case["width"] // ae.spatial_compression // p)
    n_txt = 512
    passes = 2  # text-to-video: two guidance passes per step
    dit_flops = 50 * passes * mmdit_forward_flops(pipe.dit.config, n_img, n_txt)
    row = dict(case=args.case, device=torch.cuda.get_device_name(), torch=torch.__version__, **case,
               tokens=dict(image=n_img, text=n_txt), passes_per_step=passes, dit_steps_run=args.dit_steps,
               seconds_measured=s, seconds_50_steps=projected, total_50_steps_s=total_50,
               total_measured_s=total_measured, projected=args.dit_steps != 50, dit_per_step_s=dit_per_step,
               dit_flops_50_steps=dit_flops, dit_floor_s=dit_flops / MATMUL_CEILING,
               dit_tflops=dit_flops / (dit_per_step * 50) / 1e12, peak_memory_gb=result.peak_memory_gb,
               load_s=load_s, warmup_s=warmup_s, offload=args.offload,
               peak_memory_by_phase_gb=result.peak_memory_by_phase_gb)
    if args.fp8:
        t0 = time.perf_counter()
        generate(GenerateOptions(prompts=["a warm up prompt"], steps=2, fp8=True, **common), pipeline=pipe)
        fp8_warmup_s = time.perf_counter() - t0
        torch.cuda.reset_peak_memory_stats()
        r8 = generate(GenerateOptions(prompts=[prompt], steps=args.dit_steps, fp8=True, keep_outputs=True, **common),
                      pipeline=pipe)
        s8, proj8, meas8, total8, step8 = _times(r8, args.dit_steps)
        row["fp8"] = dict(seconds_measured=s8, seconds_50_steps=proj8, total_50_steps_s=total8,
                          total_measured_s=meas8, dit_per_step_s=step8, dit_speedup=dit_per_step / step8,
                          dit_tflops_bf16_equivalent=dit_flops / (step8 * 50) / 1e12, warmup_s=fp8_warmup_s,
                          peak_memory_gb=r8.peak_memory_gb, peak_memory_by_phase_gb=r8.peak_memory_by_phase_gb,
                          quality_vs_bf16=quality_cost(result, r8), dit_steps_run=args.dit_steps,
                          note="random weights: the difference measures the FP8 numerics, not image quality")
    print(json.dumps(row, indent=2), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
