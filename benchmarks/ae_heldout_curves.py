"""Held-out PSNR vs training steps of small autoencoder configs, to size the `make demo` recipes (run on a GPU
for speed: the same fp32 computation as on the CPU, only faster).

    python benchmarks/ae_heldout_curves.py STEPS DATA_DIR

DATA_DIR holds `set_256px.parquet` and `heldout.parquet` of the split step (paths relative to DATA_DIR) and
their clips. Results: $OUT/ae_curves.json (or /tmp)."""
import glob, json, os, sys, time
import cv2, numpy as np, pandas as pd, torch, torch.nn.functional as F
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from soraflow.models.hunyuan_vae import HunyuanVAEConfig, HunyuanVideoVAE
from soraflow.models.dc_ae import DCAEConfig, VideoDCAE
dev = "cuda" if torch.cuda.is_available() else "cpu"
D = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "tunedata")
def read(p, n=72):
    cap = cv2.VideoCapture(p); fr = []
    while len(fr) < n:
        ok, f = cap.read()
        if not ok: break
        fr.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
    return np.stack(fr)
def prep(fr, h, w):
    x = torch.from_numpy(fr).permute(0, 3, 1, 2).float()
    s = max(h / x.shape[2], w / x.shape[3]); sh, sw = max(h, round(x.shape[2] * s)), max(w, round(x.shape[3] * s))
    x = F.interpolate(x, size=(sh, sw), mode="bilinear", antialias=True, align_corners=False)
    t, l = (sh - h) // 2, (sw - w) // 2
    return (x[:, :, t:t + h, l:l + w].round().clamp(0, 255) / 127.5 - 1).permute(1, 0, 2, 3)  # 3,T,H,W
raw = [read(os.path.join(D, p)) for p in pd.read_parquet(D + "/set_256px.parquet").path]
TR = {"hy": [prep(r, 48, 80).to(dev) for r in raw], "dc": [prep(r, 64, 64).to(dev) for r in raw]}
ho = [prep(read(os.path.join(D, p)), 64, 64) for p in pd.read_parquet(D + "/heldout.parquet").path]
ho = [x.to(dev) for x in ho]
out = {}
def run(name, kind, cfg, lr, B, T, steps, every=100):
    torch.manual_seed(0)
    tr = TR[kind]
    ae = (HunyuanVideoVAE(cfg) if kind == "hy" else VideoDCAE(cfg)).to(dev).train()
    opt = torch.optim.AdamW(ae.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0)
    ema = {n: p.detach().clone() for n, p in ae.named_parameters()}
    g = torch.Generator().manual_seed(0); curve = []; t0 = time.time()
    def ev():
        import copy
        m = copy.deepcopy(ae).eval()
        with torch.no_grad():
            for n, p in m.named_parameters(): p.copy_(ema[n])
            ps = []
            for c in ho:
                x = c[:, :T][None]
                r = m.decode(m.encode(x)) if kind == "hy" else m.decode(m.encode(x))
                a = ((x + 1) * 127.5).round(); b = ((r.clamp(-1, 1) + 1) * 127.5).round()
                ps.append(float(10 * torch.log10(255 ** 2 / ((a - b) ** 2).mean())))
        return float(np.mean(ps))
    curve.append((0, ev()))
    for s in range(1, steps + 1):
        xs = []
        for _ in range(B):
            c = tr[int(torch.randint(len(tr), (1,), generator=g))]; st = int(torch.randint(c.shape[1] - T + 1, (1,), generator=g))
            xs.append(c[:, st:st + T])
        x = torch.stack(xs)
        if kind == "hy":
            mean, logvar = ae.encode_moments(x).chunk(2, 1); logvar = logvar.clamp(-30, 20)
            z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
            r = ae.decode(ae.scaling_factor * z)
            loss = (r - x).abs().mean() + 1e-4 * 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).mean()
        else:
            r, _ = ae(x); loss = (r - x).abs().mean()
        opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(ae.parameters(), 1.0); opt.step()
        with torch.no_grad():
            for n, p in ae.named_parameters(): ema[n].mul_(0.95).add_(p.detach(), alpha=0.05)
        if s % every == 0: curve.append((s, round(ev(), 2)))
    out[name] = {"curve": curve, "params": sum(p.numel() for p in ae.parameters()), "sec": round(time.time() - t0, 1)}
    print(name, json.dumps(out[name]), flush=True)
    json.dump(out, open(os.environ.get("OUT", "/tmp") + "/ae_curves.json", "w"))
S = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
run("hy_tiny_lr2e-3_b4", "hy", HunyuanVAEConfig.tiny(), 2e-3, 4, 9, S)
run("hy_tiny_lr5e-3_b4", "hy", HunyuanVAEConfig.tiny(), 5e-3, 4, 9, S)
run("hy_w16_lr2e-3_b4", "hy", HunyuanVAEConfig.tiny(block_out_channels=(16, 32, 64, 64), norm_num_groups=8), 2e-3, 4, 9, S)
run("dc_tiny_lr2e-3_b4", "dc", DCAEConfig.tiny(), 2e-3, 4, 8, S)
run("dc_c32_lr2e-3_b4", "dc", DCAEConfig.tiny(latent_channels=32), 2e-3, 4, 8, S)
