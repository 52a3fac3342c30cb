"""Test helpers shared by the TransVFC codec and container tests (imported by name: pytest puts
this folder on sys.path)."""
from torch import nn


class TinyPerception(nn.Module):
    """Stand-in for the frozen FPN: res2 -> p2..p6 at strides 1, 2, 4, 8, 16 of the feature."""

    def __init__(self, in_ch: int, ch: int):
        super().__init__()
        self.lateral = nn.Conv2d(in_ch, ch, 1)
        self.down = nn.ModuleList(nn.Conv2d(ch, ch, 3, stride=2, padding=1) for _ in range(4))
        self.requires_grad_(False)
        self.eval()

    def forward(self, x):
        p = self.lateral(x)
        out = {"p2": p}
        for i, down in enumerate(self.down):
            p = down(p)
            out[f"p{i + 3}"] = p
        return out
