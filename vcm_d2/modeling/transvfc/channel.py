"""Channel reduction (256 -> 64) and restoration (64 -> 256) of the res2 feature (Sec. 3).

Both keep the spatial size (stride 1): a 3x3 conv changes the width and a few residual blocks
refine it. Squeezing channel redundancy first makes every later stage 4x cheaper."""
from compressai.layers import conv3x3
from torch import Tensor, nn

from .layers import res_stack

__all__ = ["ChannelReduction", "ChannelRestoration"]


class ChannelReduction(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, num_res_blocks: int):
        super().__init__()
        self.proj = conv3x3(in_ch, out_ch)
        self.refine = res_stack(out_ch, num_res_blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.refine(self.proj(x))


class ChannelRestoration(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, num_res_blocks: int):
        super().__init__()
        self.refine = res_stack(in_ch, num_res_blocks)
        self.proj = conv3x3(in_ch, out_ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.refine(x))
