"""The KL-VAE's posterior log-variance at initialisation (vae.logvar_init) and its range checks."""

import pytest
import torch

from soraflow.training.config import ConfigError, apply_overrides, validate
from soraflow.training.recipes import get_recipe


def _clip(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, 9, 32, 32, generator=g) * 2 - 1


def test_init_posterior_logvar_sets_every_logvar_and_keeps_the_means():
    from soraflow.models.hunyuan_vae import HunyuanVideoVAE
    from soraflow.training.stages import init_posterior_logvar

    torch.manual_seed(0)
    ae = HunyuanVideoVAE.tiny()
    x = _clip()
    with torch.no_grad():
        mean0, logvar0 = ae.encode_moments(x).chunk(2, dim=1)
        init_posterior_logvar(ae, -7.0)
        mean1, logvar1 = ae.encode_moments(x).chunk(2, dim=1)
    assert logvar0.std() > 0.01  # the default init varies with the input ...
    torch.testing.assert_close(logvar1, torch.full_like(logvar1, -7.0))  # ... this one is the constant everywhere
    torch.testing.assert_close(mean1, mean0)
    # the posterior sample's noise is exp(-7 / 2) times the standard normal draw, as the encode formula says
    g0, g1 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    with torch.no_grad():
        z = ae.encode(x, generator=g0) / ae.scaling_factor
        z_mean = ae.encode(x, sample=False) / ae.scaling_factor
    from diffusers.utils.torch_utils import randn_tensor

    noise = randn_tensor(z.shape, generator=g1, dtype=z.dtype)
    torch.testing.assert_close(z - z_mean, torch.exp(torch.tensor(-3.5)) * noise, atol=1e-5, rtol=1e-4)


def test_the_stage_applies_logvar_init_to_a_fresh_vae_only(tmp_path):
    from soraflow.training.stages import VAEStage

    cfg = get_recipe("tiny-cpu-hunyuan-vae")
    apply_overrides(cfg, {"vae.logvar_init": -6.0})
    stage = VAEStage(cfg, torch.device("cpu"), torch.float32, 0, 1)
    ae = stage.build_model().ae
    c = ae.latent_channels
    assert torch.all(ae.quant_conv.weight[c:] == 0)
    assert torch.all(ae.quant_conv.bias[c:] == cfg.vae.logvar_init)
    # weights given (ae.path): they are used as they are
    from safetensors.torch import save_file

    path = tmp_path / "hy.safetensors"
    save_file({k: v.contiguous() for k, v in ae.official_state_dict().items()}, str(path))
    with torch.no_grad():
        ae.quant_conv.bias[c:] = 0.5
    save_file({k: v.contiguous() for k, v in ae.official_state_dict().items()}, str(path))
    cfg2 = get_recipe("tiny-cpu-hunyuan-vae")
    apply_overrides(cfg2, {"vae.logvar_init": -6.0})
    cfg2.ae.path = str(path)
    loaded = VAEStage(cfg2, torch.device("cpu"), torch.float32, 0, 1).build_model().ae
    assert torch.all(loaded.quant_conv.bias[c:] == 0.5)


def test_logvar_init_and_kl_weight_are_range_checked():
    cfg = get_recipe("tiny-cpu-hunyuan-vae")
    apply_overrides(cfg, {"vae.logvar_init": -40.0})
    with pytest.raises(ConfigError, match=r"vae\.logvar_init: must be in \[-30, 20\]"):
        validate(cfg)
    cfg = get_recipe("tiny-cpu-hunyuan-vae")
    apply_overrides(cfg, {"vae.kl_weight": -1.0})
    with pytest.raises(ConfigError, match=r"vae\.kl_weight: must be >= 0"):
        validate(cfg)
    cfg = get_recipe("tiny-cpu-hunyuan-vae")
    apply_overrides(cfg, {"vae.logvar_init": None})
    validate(cfg)  # None: the default init
