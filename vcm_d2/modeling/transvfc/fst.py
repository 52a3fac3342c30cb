"""Task-oriented feature space transform (Sec. 3.3, eq. 4, Fig. 6).

    F^^i_t = FST^i(F^_t)                                                              (4)

Three parallel branches on the reconstructed res2 feature F^_t (``in_ch`` at 1/``in_stride``
of the image), each ending with ``hidden`` channels at the feature resolution:

* up-then-down: x2 sub-pixel steps up to the full image resolution, a 3-channel coarse frame
  x^_t (returned, supervised by D_x), then stride-2 convs from x^_t back down - pixel-domain
  content preservation;
* bottleneck-resblock: ResNet bottleneck blocks at the feature resolution - migration at the
  original shape;
* down-then-up: stride-2 convs, residual blocks at the coarse scale, sub-pixel steps back up -
  global context.

The branches are concatenated and a 3x3 conv (preceded by stride-2 3x3 convs when the target
stride is coarser) gives the task feature: ``out_ch`` channels at 1/``out_stride`` of the
image. ``use_up_down`` / ``use_down_up`` are the Table 6 ablations.

``residual`` (not in the paper) adds the input to that output through a separate,
zero-initialized last conv (``correction``): the FST starts as the identity and learns a
correction of the decoded feature. For tasks whose feature has the res2 shape, and short
schedules: the paper trains the FST 100k iterations; a few hundred from a random init end below
the untransformed decoded feature, which stage 1's perception loss already fits to the upstream
network. Checkpoints of a plain FST load into it without their last conv (``correction`` is a
new name), so training still starts at the identity.
"""
from typing import Dict, Optional

import torch
from compressai.layers import ResidualBlock, conv3x3, subpel_conv3x3
from detectron2.config import configurable
from torch import Tensor, nn

from .layers import DOWN, BottleneckBlock, crop_to, log2_exact, pad_to_multiple

__all__ = ["FeatureSpaceTransform"]


class FeatureSpaceTransform(nn.Module):
    """FST^i: res2 feature -> feature of task i.

    ``forward(x)`` returns {"feature": N x out_ch x ceil(H / r) x ceil(W / r) with
    r = out_stride / in_stride, "coarse_image": N x 3 x (H * in_stride) x (W * in_stride) or
    None}. Inputs of any size work: they are replicate-padded to a multiple of the
    branches' downsampling and the outputs cropped back.
    """

    @configurable
    def __init__(self, *, in_channels: int = 256, in_stride: int = 4, out_channels: int = 256,
                 out_stride: int = 4, hidden_channels: int = 96, image_channels: int = 32,
                 image_out_channels: int = 3, num_res_blocks: int = 4,
                 bottleneck_channels: int = 64, global_channels: int = 144,
                 num_global_res_blocks: int = 2, global_downsampling_steps: int = 2,
                 use_up_down: bool = True, use_down_up: bool = True, residual: bool = False):
        super().__init__()
        up_steps = log2_exact(in_stride, "FST input stride")
        if out_stride % in_stride:
            raise ValueError(f"FST OUT_STRIDE {out_stride} must be a multiple of the input "
                             f"stride {in_stride}")
        out_steps = log2_exact(out_stride // in_stride, "OUT_STRIDE / input stride")
        if global_downsampling_steps < 1:
            raise ValueError("GLOBAL_DOWNSAMPLING_STEPS must be >= 1")
        self.in_stride = in_stride
        self.out_ratio = DOWN**out_steps
        self.pad_multiple = max(DOWN**global_downsampling_steps if use_down_up else 1,
                                self.out_ratio)
        act = nn.LeakyReLU

        if use_up_down:
            up = [conv3x3(in_channels, hidden_channels), act(inplace=True)]
            ch = hidden_channels
            for i in range(up_steps):
                nxt = image_channels if i == up_steps - 1 else max(image_channels, ch // DOWN)
                up += [subpel_conv3x3(ch, nxt, DOWN), act(inplace=True)]
                ch = nxt
            up.append(conv3x3(ch, image_out_channels))
            self.to_image = nn.Sequential(*up)
            down, ch = [], image_out_channels
            for i in range(up_steps):
                nxt = hidden_channels if i == up_steps - 1 else image_channels
                down += [conv3x3(ch, nxt, stride=DOWN), act(inplace=True)]
                ch = nxt
            down.append(ResidualBlock(hidden_channels, hidden_channels))
            self.from_image = nn.Sequential(*down)
        else:
            self.to_image = self.from_image = None

        self.bottleneck_branch = nn.Sequential(
            *[BottleneckBlock(in_channels, bottleneck_channels) for _ in range(num_res_blocks)],
            conv3x3(in_channels, hidden_channels), act(inplace=True))

        if use_down_up:
            layers, ch = [], in_channels
            for _ in range(global_downsampling_steps):
                layers += [conv3x3(ch, global_channels, stride=DOWN), act(inplace=True)]
                ch = global_channels
            layers += [ResidualBlock(ch, ch) for _ in range(num_global_res_blocks)]
            for i in range(global_downsampling_steps):
                nxt = hidden_channels if i == global_downsampling_steps - 1 else ch
                layers += [subpel_conv3x3(ch, nxt, DOWN), act(inplace=True)]
                ch = nxt
            self.down_up_branch = nn.Sequential(*layers)
        else:
            self.down_up_branch = None

        num_branches = 1 + int(use_up_down) + int(use_down_up)
        head, ch = [], hidden_channels * num_branches
        for _ in range(out_steps):
            head += [conv3x3(ch, hidden_channels, stride=DOWN), act(inplace=True)]
            ch = hidden_channels
        last = conv3x3(ch, out_channels)
        self.correction = None
        if residual:
            if out_steps or out_channels != in_channels:
                raise ValueError(f"a residual FST needs the input's shape: {in_channels} channels "
                                 f"at stride {in_stride}, got {out_channels} at {out_stride}")
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.correction = last
        else:
            head.append(last)
        self.head = nn.Sequential(*head)

    @classmethod
    def from_config(cls, cfg):
        T = cfg.MODEL.VCM.TRANSVFC
        S = T.FST
        return {
            "in_channels": T.IN_CHANNELS,
            "in_stride": T.FEATURE_STRIDE,
            "out_channels": S.OUT_CHANNELS,
            "out_stride": S.OUT_STRIDE,
            "hidden_channels": S.HIDDEN_CHANNELS,
            "image_channels": S.IMAGE_CHANNELS,
            "image_out_channels": S.IMAGE_OUT_CHANNELS,
            "num_res_blocks": S.NUM_RES_BLOCKS,
            "bottleneck_channels": S.BOTTLENECK_CHANNELS,
            "global_channels": S.GLOBAL_CHANNELS,
            "num_global_res_blocks": S.NUM_GLOBAL_RES_BLOCKS,
            "global_downsampling_steps": S.GLOBAL_DOWNSAMPLING_STEPS,
            "use_up_down": S.USE_UP_DOWN,
            "use_down_up": S.USE_DOWN_UP,
            "residual": S.RESIDUAL,
        }

    def forward(self, x: Tensor) -> Dict[str, Optional[Tensor]]:
        if x.dim() != 4:
            raise ValueError(f"expected an NCHW feature, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        xp = pad_to_multiple(x, self.pad_multiple)
        branches = [self.bottleneck_branch(xp)]
        image = None
        if self.to_image is not None:
            image = self.to_image(xp)
            branches.insert(0, self.from_image(image))
            image = crop_to(image, (h * self.in_stride, w * self.in_stride))
        if self.down_up_branch is not None:
            branches.append(self.down_up_branch(xp))
        out = self.head(torch.cat(branches, dim=1))
        if self.correction is not None:
            out = xp + self.correction(out)
        r = self.out_ratio
        return {"feature": crop_to(out, (-(-h // r), -(-w // r))), "coarse_image": image}
