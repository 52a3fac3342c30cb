"""Distortion codec of CDRE (paper section II-C): encoder E (eq. 3-4), binary quantization Q
(eq. 5) and decoder D (eq. 3), F_d = D(Q(E(x, x_hat | F^o, F^c))).

Sizes: an image side of n pixels gives a latent side of ceil(n / 2^(blocks+1)) (ceil(n/32)
by default), see ``layers``. The CNN decoder upsamples by 2^upsamples and crops to a requested
size, so F_d lines up with a backbone feature of the padded or unpadded image alike.
"""
import abc
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from torch import nn

from .extractor import CompressionSensitiveExtractor, used_scales_from_config
from .layers import SpatialAttention, conv3x3, crop_to

__all__ = [
    "binarize",
    "LinearModulation",
    "ConcatFusion",
    "DistortionEncoder",
    "DistortionDecoderBase",
    "DistortionDecoder",
    "TokenDistortionDecoder",
    "EncoderSideOutput",
    "CDREEncoderSide",
]


class _Binarize(torch.autograd.Function):
    """round(sigmoid(y)) forward, d sigmoid(y) / dy backward (straight-through round)."""

    @staticmethod
    def forward(ctx, y):
        s = torch.sigmoid(y)
        ctx.save_for_backward(s)
        return torch.round(s)

    @staticmethod
    def backward(ctx, grad):
        (s,) = ctx.saved_tensors
        return grad * s * (1 - s)


def binarize(y: torch.Tensor) -> torch.Tensor:
    """Binary quantization y_hat = round(sigmoid(y)) (eq. 5).

    Forward values are exactly 0.0 or 1.0 (1 iff sigmoid(y) > 0.5; the tie at y == 0 rounds
    half-to-even to 0). The backward pass is the gradient of sigmoid, i.e. the rounding is
    passed straight through, so the task loss trains the encoder through the binary latent.
    """
    return _Binarize.apply(y)


class LinearModulation(nn.Module):
    """F' = alpha * F + beta with alpha = Conv(F^o, F^c), beta = Conv(F^o, F^c) (eq. 4)."""

    def __init__(self, channels: int, condition_channels: int, kernel_size: int = 1):
        super().__init__()
        cond = 2 * condition_channels
        self.alpha = nn.Conv2d(cond, channels, kernel_size, padding=kernel_size // 2)
        self.beta = nn.Conv2d(cond, channels, kernel_size, padding=kernel_size // 2)
        # Start near the identity (alpha ~ 1) so an untrained extractor does not scramble F.
        nn.init.ones_(self.alpha.bias)
        nn.init.zeros_(self.beta.bias)

    def forward(self, f, f_o, f_c):
        cond = torch.cat([f_o, f_c], dim=1)
        return self.alpha(cond) * f + self.beta(cond)


class ConcatFusion(nn.Module):
    """Ablation of eq. 4 ("simple concatenation", Table II): F' = Conv(concat(F, F^o, F^c))."""

    def __init__(self, channels: int, condition_channels: int, kernel_size: int = 1):
        super().__init__()
        self.fuse = nn.Conv2d(
            channels + 2 * condition_channels, channels, kernel_size, padding=kernel_size // 2
        )

    def forward(self, f, f_o, f_c):
        return self.fuse(torch.cat([f, f_o, f_c], dim=1))


class DistortionEncoder(nn.Module):
    """Distortion encoder E(x, x_hat | F^o, F^c) -> compact representation y (eq. 3-4).

    Input concat(x, x_hat, x - x_hat); ``num_blocks`` blocks of Conv3x3 s2 + InstanceNorm +
    LeakyReLU + spatial attention on a narrow path; the outputs of the blocks listed in
    ``modulated_blocks`` are conditioned on the extractor features of the same stride (block
    i and extractor scale i both have stride 2^(i+1)); a last Conv3x3 s2 maps to the latent
    at stride 2^(num_blocks+1).
    """

    @configurable
    def __init__(
        self,
        *,
        in_channels: int = 3,
        channels: int = 4,
        latent_channels: int = 6,
        num_blocks: int = 4,
        condition_channels: int = 16,
        modulated_blocks: Sequence[int] = (0, 1, 2),
        use_modulation: bool = True,
        modulation_kernel: int = 1,
        spatial_kernel: int = 7,
        leaky_slope: float = 0.01,
    ):
        """
        Args:
            in_channels: channels of one image (the encoder input has 3x as many).
            channels: width of the narrow path.
            latent_channels: channels of y (bits per latent position).
            num_blocks: stride-2 blocks before the final conv.
            condition_channels: channels of each extractor feature F_i^o / F_i^c.
            modulated_blocks: block indices conditioned on (F_i^o, F_i^c), in the order of
                the feature lists passed to ``forward``.
            use_modulation: eq. 4 linear modulation; False: ``ConcatFusion`` (ablation).
            modulation_kernel: kernel of the alpha/beta (or fusion) convs.
            spatial_kernel: kernel of the spatial attention.
            leaky_slope: negative slope of the LeakyReLU.
        """
        super().__init__()
        mod = tuple(int(i) for i in modulated_blocks)
        if any(i < 0 or i >= num_blocks for i in mod) or list(mod) != sorted(set(mod)):
            raise ValueError(f"modulated_blocks must be increasing indices in [0, {num_blocks}), got {mod}")
        if modulation_kernel < 1 or modulation_kernel % 2 == 0:
            raise ValueError(f"modulation_kernel must be odd and positive, got {modulation_kernel}")
        self.modulated_blocks = mod
        self.latent_stride = 2 ** (num_blocks + 1)
        self.latent_channels = latent_channels
        blocks = []
        for i in range(num_blocks):
            blocks.append(
                nn.Sequential(
                    conv3x3(3 * in_channels if i == 0 else channels, channels, stride=2),
                    nn.InstanceNorm2d(channels, affine=True),
                    nn.LeakyReLU(leaky_slope),
                    SpatialAttention(spatial_kernel),
                )
            )
        self.blocks = nn.ModuleList(blocks)
        fusion = LinearModulation if use_modulation else ConcatFusion
        # Keys are block indices (strings, as nn.ModuleDict requires).
        self.conditioning = nn.ModuleDict(
            {str(i): fusion(channels, condition_channels, modulation_kernel) for i in mod}
        )
        self.to_latent = conv3x3(channels, latent_channels, stride=2)

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.VCM.CDRE
        if c.EXTRACTOR_BLOCKS > c.ENCODER_BLOCKS:
            raise ValueError(
                f"EXTRACTOR_BLOCKS ({c.EXTRACTOR_BLOCKS}) must not exceed ENCODER_BLOCKS "
                f"({c.ENCODER_BLOCKS}): every extractor scale conditions an encoder block"
            )
        return {
            "channels": c.ENCODER_CHANNELS,
            "latent_channels": c.LATENT_CHANNELS,
            "num_blocks": c.ENCODER_BLOCKS,
            "condition_channels": c.EXTRACTOR_CHANNELS,
            "modulated_blocks": used_scales_from_config(cfg),
            "use_modulation": c.USE_MODULATION,
            "modulation_kernel": c.MODULATION_KERNEL,
            "spatial_kernel": c.SPATIAL_KERNEL,
            "leaky_slope": c.LEAKY_RELU_SLOPE,
        }

    def forward(
        self,
        x: torch.Tensor,
        x_hat: torch.Tensor,
        feats_o: Sequence[torch.Tensor],
        feats_c: Sequence[torch.Tensor],
    ) -> torch.Tensor:
        """Return y (B, latent_channels, ceil(H/latent_stride), ceil(W/latent_stride)), real-valued.

        feats_o / feats_c: one feature per entry of ``modulated_blocks`` (what
        ``CompressionSensitiveExtractor.forward`` returns for matching ``used_scales``).
        """
        if len(feats_o) != len(self.modulated_blocks) or len(feats_c) != len(self.modulated_blocks):
            raise ValueError(
                f"expected {len(self.modulated_blocks)} extractor features per image for blocks "
                f"{self.modulated_blocks}, got {len(feats_o)} and {len(feats_c)}"
            )
        cond = dict(zip(self.modulated_blocks, zip(feats_o, feats_c)))
        f = torch.cat([x, x_hat, x - x_hat], dim=1)
        for i, block in enumerate(self.blocks):
            f = block(f)
            if i in cond:
                f_o, f_c = cond[i]
                if f_o.shape[-2:] != f.shape[-2:] or f_c.shape[-2:] != f.shape[-2:]:
                    raise ValueError(
                        f"extractor features {tuple(f_o.shape[-2:])} do not match encoder block {i} "
                        f"output {tuple(f.shape[-2:])}"
                    )
                f = self.conditioning[str(i)](f, f_o, f_c)
        return self.to_latent(f)


class DistortionDecoderBase(nn.Module, abc.ABC):
    """Hook for distortion decoders D: binary latent y_hat -> distortion feature F_d.

    Subclasses set ``out_channels`` and implement ``forward(y_hat, output_size=None)``; the
    layout of F_d is what the matching embedding consumes: NCHW maps for
    ``DistortionEmbedding`` (CNN backbones), (B, N, C) tokens for ``CrossAttentionEmbedding``.
    """

    out_channels: int

    @abc.abstractmethod
    def forward(self, y_hat: torch.Tensor, output_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        ...


class DistortionDecoder(DistortionDecoderBase):
    """CNN-version decoder: (B, latent, h, w) -> (B, channels, h * 2^upsamples, w * 2^upsamples).

    Conv3x3 to ``channels``, then per 2x step Conv3x3 (to 4x channels) + PixelShuffle(2) +
    LeakyReLU + Conv3x3 + LeakyReLU. With the default 3 steps a latent at 1/32 comes back at
    1/4 of the image (``output_stride``), the input stride of a ResNet's res2.
    """

    @configurable
    def __init__(
        self,
        *,
        latent_channels: int = 6,
        channels: int = 16,
        num_upsamples: int = 3,
        latent_stride: int = 32,
        leaky_slope: float = 0.01,
    ):
        super().__init__()
        if latent_stride % (2**num_upsamples) != 0:
            raise ValueError(f"latent_stride {latent_stride} is not divisible by 2^{num_upsamples}")
        self.out_channels = channels
        self.output_stride = latent_stride // 2**num_upsamples
        self.head = nn.Sequential(conv3x3(latent_channels, channels), nn.LeakyReLU(leaky_slope))
        ups = []
        for _ in range(num_upsamples):
            ups.append(
                nn.Sequential(
                    conv3x3(channels, 4 * channels),
                    nn.PixelShuffle(2),
                    nn.LeakyReLU(leaky_slope),
                    conv3x3(channels, channels),
                    nn.LeakyReLU(leaky_slope),
                )
            )
        self.upsample = nn.Sequential(*ups)

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.VCM.CDRE
        return {
            "latent_channels": c.LATENT_CHANNELS,
            "channels": c.DECODER_CHANNELS,
            "num_upsamples": c.DECODER_UPSAMPLES,
            "latent_stride": 2 ** (c.ENCODER_BLOCKS + 1),
            "leaky_slope": c.LEAKY_RELU_SLOPE,
        }

    def forward(self, y_hat: torch.Tensor, output_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """F_d; ``output_size`` (h, w) crops the bottom/right, e.g. to the res2 input size
        ceil(H/4) x ceil(W/4) of an image whose side is not a multiple of 32."""
        d = self.upsample(self.head(y_hat))
        return d if output_size is None else crop_to(d, output_size, "decoded distortion feature")


class TokenDistortionDecoder(DistortionDecoderBase):
    """Transformer-version decoder: (B, latent, h, w) -> tokens (B, h*w, channels), row-major.

    No upsampling (tokens stay at the latent stride): Conv3x3 to ``channels`` then
    ``num_blocks`` residual blocks x + Conv3x3(LeakyReLU(Conv3x3(x))).
    """

    @configurable
    def __init__(
        self,
        *,
        latent_channels: int = 6,
        channels: int = 96,
        num_blocks: int = 2,
        leaky_slope: float = 0.01,
    ):
        super().__init__()
        self.out_channels = channels
        self.head = conv3x3(latent_channels, channels)
        self.res_blocks = nn.ModuleList(
            nn.Sequential(
                conv3x3(channels, channels), nn.LeakyReLU(leaky_slope), conv3x3(channels, channels)
            )
            for _ in range(num_blocks)
        )

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.VCM.CDRE
        return {
            "latent_channels": c.LATENT_CHANNELS,
            "channels": c.TOKEN_CHANNELS,
            "num_blocks": c.TOKEN_DECODER_BLOCKS,
            "leaky_slope": c.LEAKY_RELU_SLOPE,
        }

    def forward(self, y_hat: torch.Tensor, output_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """Tokens (B, h*w, channels); ``output_size`` is accepted for the common interface and
        must be None or the latent size (tokens are never resized)."""
        if output_size is not None and tuple(output_size) != tuple(y_hat.shape[-2:]):
            raise ValueError(
                f"TokenDistortionDecoder does not resize: output_size {tuple(output_size)} != latent "
                f"size {tuple(y_hat.shape[-2:])}"
            )
        d = self.head(y_hat)
        for block in self.res_blocks:
            d = d + block(d)
        return d.flatten(2).transpose(1, 2)


class EncoderSideOutput(NamedTuple):
    """Everything the encoder side produces for one batch."""

    y: torch.Tensor  # real-valued compact representation (B, latent, h, w)
    y_hat: torch.Tensor  # binary representation, exactly 0/1, straight-through gradient
    feats_o: List[torch.Tensor]  # F_i^o at the extractor's used scales
    feats_c: List[torch.Tensor]  # F_i^c at the same scales (for the cosine loss, eq. 8)


class CDREEncoderSide(nn.Module):
    """Extractor + distortion encoder + binary quantization: (x, x_hat) -> y_hat (eq. 2-5).

    This is all that runs where the original frame exists; y_hat is what the side stream
    carries (``side_stream.encode_side_stream``).
    """

    @configurable
    def __init__(self, *, extractor: CompressionSensitiveExtractor, encoder: DistortionEncoder,
                 constant_representation: bool = False):
        """``constant_representation``: an ablation; y_hat is all zeros (a side stream without
        information), the modules and the cosine loss stay, so a model trained so has Ours'
        added capacity but not its distortion information."""
        super().__init__()
        if tuple(extractor.used_scales) != tuple(encoder.modulated_blocks):
            raise ValueError(
                f"extractor scales {extractor.used_scales} must equal the encoder's modulated "
                f"blocks {encoder.modulated_blocks}"
            )
        self.extractor = extractor
        self.encoder = encoder
        self.constant_representation = bool(constant_representation)

    @classmethod
    def from_config(cls, cfg):
        return {"extractor": CompressionSensitiveExtractor(cfg), "encoder": DistortionEncoder(cfg),
                "constant_representation": cfg.MODEL.VCM.CDRE.CONSTANT_REPRESENTATION}

    @property
    def latent_stride(self) -> int:
        return self.encoder.latent_stride

    def forward(self, x: torch.Tensor, x_hat: torch.Tensor) -> EncoderSideOutput:
        feats_o, feats_c = self.extractor(x, x_hat)
        y = self.encoder(x, x_hat, feats_o, feats_c)
        y_hat = torch.zeros_like(y) if self.constant_representation else binarize(y)
        return EncoderSideOutput(y=y, y_hat=y_hat, feats_o=feats_o, feats_c=feats_c)
