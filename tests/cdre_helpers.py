"""Test helpers shared by the CDRE backbone tests (imported by name: pytest puts this folder on
sys.path)."""
import torch

from vcm_d2.modeling.cdre.embedding import CrossAttentionFusion

# Channels and stride of the binary map y_hat (the CDRE defaults).
LATENT, STRIDE = 6, 32


def num_params(module):
    return sum(p.numel() for p in module.parameters())


def ceil_div(n, s=STRIDE):
    return -(-n // s)


def random_batch(h, w, n=2, seed=0):
    """``n`` images and a random binary map of their latent size."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, h, w, generator=g)
    y_hat = (torch.rand(n, LATENT, ceil_div(h), ceil_div(w), generator=g) > 0.5).float()
    return x, y_hat


def activate_cross_attention(module, seed=0, std=0.05):
    """Random weights for the zero-initialised output projections of the cross-attentions
    (eq. 7) in ``module``: y_hat now changes the features."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, CrossAttentionFusion):
                m.out.weight.copy_(torch.randn(m.out.weight.shape, generator=g) * std)
    return module
