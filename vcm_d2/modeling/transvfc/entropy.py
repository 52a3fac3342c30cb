"""Entropy model of one latent: mean-scale hyperprior, optionally fused with a temporal prior.

``HyperpriorEntropyModel`` owns the hyper analysis/synthesis transforms, a CompressAI
``EntropyBottleneck`` for the hyper-latent z and a ``GaussianConditional`` for y. It is used
three times in TransVFC: the intra latent, the motion latent (hyperprior only) and the residual
latent (hyperprior + DCVC-TCM-style temporal prior from the compensated feature).

Bit-exactness: the decoder's ``y_hat`` is ``symbols + means`` (CompressAI's ``dequantize``);
``compress`` returns exactly that tensor, computed with the same public CompressAI calls
(``quantize(..., "symbols", means)`` then ``dequantize(symbols, means)``) from the same
``z_hat`` (obtained by actually decoding z's string) and the same parameter network on the same
inputs. The decoder therefore reproduces the encoder's ``y_hat`` bit for bit on the same
machine, library build and torch thread count (float convolutions are not guaranteed identical
across CPU kernels or thread partitions).
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.layers import conv1x1, conv3x3, subpel_conv3x3
from torch import Tensor, nn

from .layers import DOWN, ste_round

__all__ = ["HyperpriorEntropyModel", "HYPER_DOWNSAMPLING", "QUANTIZATION_MODES"]

HYPER_STEPS = 2  # stride-2 convs between y and z
HYPER_DOWNSAMPLING = DOWN**HYPER_STEPS  # z is 1/4 of y in each dimension
QUANTIZATION_MODES = ("ste", "noise")
# Strings of one coded latent pair, in this order.
Y_STRINGS, Z_STRINGS = 0, 1


class HyperpriorEntropyModel(nn.Module):
    """Mean-scale hyperprior for a latent ``y`` of ``latent_ch`` channels.

    Args:
        latent_ch: channels of y.
        hyper_ch: channels of z (y downsampled by ``HYPER_DOWNSAMPLING``).
        prior_ch: channels of an extra prior at y's resolution (0: hyperprior only). When
            given, (hyper params, prior) go through a 1x1 entropy-parameter network.
        param_ch: hidden width of that 1x1 network.
    """

    def __init__(self, latent_ch: int, hyper_ch: int, prior_ch: int = 0, param_ch: int = 256):
        super().__init__()
        self.latent_ch = latent_ch
        self.prior_ch = prior_ch
        self.hyper_analysis = nn.Sequential(
            conv3x3(latent_ch, hyper_ch),
            nn.LeakyReLU(inplace=True),
            conv3x3(hyper_ch, hyper_ch, stride=DOWN),
            nn.LeakyReLU(inplace=True),
            conv3x3(hyper_ch, hyper_ch, stride=DOWN),
        )
        mid = latent_ch * 3 // 2
        self.hyper_synthesis = nn.Sequential(
            subpel_conv3x3(hyper_ch, latent_ch, DOWN),
            nn.LeakyReLU(inplace=True),
            subpel_conv3x3(latent_ch, mid, DOWN),
            nn.LeakyReLU(inplace=True),
            conv3x3(mid, 2 * latent_ch),
        )
        if prior_ch > 0:
            self.entropy_parameters = nn.Sequential(
                conv1x1(2 * latent_ch + prior_ch, param_ch),
                nn.LeakyReLU(inplace=True),
                conv1x1(param_ch, param_ch),
                nn.LeakyReLU(inplace=True),
                conv1x1(param_ch, 2 * latent_ch),
            )
        else:
            self.entropy_parameters = None
        self.entropy_bottleneck = EntropyBottleneck(hyper_ch)
        self.gaussian_conditional = GaussianConditional(None)

    # ---------------------------------------------------------------- shared by both sides
    def gaussian_params(self, z_hat: Tensor, prior: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """(scales, means) of y from the decoded hyper-latent and the optional prior."""
        params = self.hyper_synthesis(z_hat)
        if self.entropy_parameters is not None:
            if prior is None:
                raise ValueError("this entropy model needs a prior tensor (temporal prior)")
            if prior.shape[-2:] != params.shape[-2:]:
                raise ValueError(
                    f"prior size {tuple(prior.shape[-2:])} != latent size {tuple(params.shape[-2:])}"
                )
            params = self.entropy_parameters(torch.cat([params, prior], dim=1))
        scales, means = params.chunk(2, dim=1)
        return scales, means

    @staticmethod
    def z_size(y_size: Sequence[int]) -> Tuple[int, int]:
        h, w = y_size
        if h % HYPER_DOWNSAMPLING or w % HYPER_DOWNSAMPLING:
            raise ValueError(f"latent size {tuple(y_size)} not a multiple of {HYPER_DOWNSAMPLING}")
        return h // HYPER_DOWNSAMPLING, w // HYPER_DOWNSAMPLING

    # ---------------------------------------------------------------- training / estimation
    def forward(self, y: Tensor, prior: Optional[Tensor] = None,
                quantization: str = "ste") -> Tuple[Tensor, Dict[str, Tensor]]:
        """Returns (y_hat for the synthesis transform, {"y": likelihoods, "z": likelihoods}).

        The rate uses additive noise in training (CompressAI's behaviour); in eval mode both
        the rate and ``y_hat`` use rounding around the means, exactly like ``compress``."""
        if quantization not in QUANTIZATION_MODES:
            raise ValueError(f"quantization must be one of {QUANTIZATION_MODES}, got {quantization!r}")
        z = self.hyper_analysis(y)
        z_hat, z_likelihoods = self.entropy_bottleneck(z)
        scales, means = self.gaussian_params(z_hat, prior)
        y_noisy, y_likelihoods = self.gaussian_conditional(y, scales, means=means)
        if self.training and quantization == "ste":
            y_hat = ste_round(y - means) + means
        else:
            y_hat = y_noisy
        return y_hat, {"y": y_likelihoods, "z": z_likelihoods}

    # ---------------------------------------------------------------- entropy coding (CPU)
    def compress(self, y: Tensor, prior: Optional[Tensor] = None) -> Tuple[List[List[bytes]], Tensor]:
        """Code y; returns ([y_strings, z_strings], y_hat) with y_hat == decompress(...)."""
        z = self.hyper_analysis(y)
        z_strings = self.entropy_bottleneck.compress(z)
        z_hat = self.entropy_bottleneck.decompress(z_strings, z.shape[-2:])
        scales, means = self.gaussian_params(z_hat, prior)
        gc = self.gaussian_conditional
        indexes = gc.build_indexes(scales)
        y_strings = gc.compress(y, indexes, means=means)
        y_hat = gc.dequantize(gc.quantize(y, "symbols", means), means)
        return [y_strings, z_strings], y_hat

    def decompress(self, strings: List[List[bytes]], y_size: Sequence[int],
                   prior: Optional[Tensor] = None) -> Tensor:
        """Decode y_hat of spatial size ``y_size`` from ``[y_strings, z_strings]``."""
        if not isinstance(strings, (list, tuple)) or len(strings) != 2:
            raise ValueError("expected [y_strings, z_strings]")
        z_hat = self.entropy_bottleneck.decompress(strings[Z_STRINGS], self.z_size(y_size))
        scales, means = self.gaussian_params(z_hat, prior)
        gc = self.gaussian_conditional
        indexes = gc.build_indexes(scales)
        return gc.decompress(strings[Y_STRINGS], indexes, means=means)
