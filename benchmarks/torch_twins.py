"""PyTorch twins of the library's ResNet-20 and CNN, and the weight copy that makes them equal.

The reference networks of `tests/test_resnet.py` (forward passes equal on copied weights) and of
`benchmarks/conv_speed.py` (the same network timed in eager PyTorch). Layouts: our HWIO kernels
become OIHW, Dense (in, out) becomes Linear (out, in); flax BatchNorm momentum 0.9 is torch's
0.1. Import needs torch (`pip install -e ".[bench]"`).
"""

from __future__ import annotations

import numpy as np
import torch

F = torch.nn.functional


class BasicBlock(torch.nn.Module):
    """The widely used PyTorch CIFAR basic block (option A: F.pad(x[:, :, ::2, ::2], planes//4))."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(cout)
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(cout)
        self.pad = (cout - cin) // 2 if (stride != 1 or cin != cout) else None

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x if self.pad is None else F.pad(x[:, :, ::2, ::2],
                                                 (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + short)


class ResNet20(torch.nn.Module):
    """He et al. 2016's CIFAR ResNet-20 (16/32/64 channels, 3 blocks a stage, option A)."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn = torch.nn.BatchNorm2d(16)
        blocks, cin = [], 16
        for s, cout in enumerate((16, 32, 64)):
            for b in range(3):
                blocks.append(BasicBlock(cin, cout, 2 if (s > 0 and b == 0) else 1))
                cin = cout
        self.blocks = torch.nn.Sequential(*blocks)
        self.fc = torch.nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(x.mean((2, 3)))


class CNN(torch.nn.Module):
    """`models.CNN` with norm "batch" before ReLU, max pools, no dropout: conv (no bias) -> BN ->
    ReLU, `convs_per_stage` a stage, a 2x2 max pool between stages, mean pool, Linear."""

    def __init__(self, in_channels=1, widths=(16, 32, 64), convs_per_stage=2, num_classes=10):
        super().__init__()
        self.widths, self.convs_per_stage = tuple(widths), convs_per_stage
        self.convs = torch.nn.ModuleList()
        self.bns = torch.nn.ModuleList()
        cin = in_channels
        for width in widths:
            for _ in range(convs_per_stage):
                self.convs.append(torch.nn.Conv2d(cin, width, 3, 1, 1, bias=False))
                self.bns.append(torch.nn.BatchNorm2d(width))
                cin = width
        self.fc = torch.nn.Linear(cin, num_classes)

    def forward(self, x):
        j = 0
        for s in range(len(self.widths)):
            for _ in range(self.convs_per_stage):
                x = F.relu(self.bns[j](self.convs[j](x)))
                j += 1
            if s < len(self.widths) - 1:
                x = F.max_pool2d(x, 2)
        return self.fc(x.mean((2, 3)))


def _conv(dst, kernel):
    dst.weight.data = torch.tensor(np.asarray(kernel).transpose(3, 2, 0, 1).copy())


def _bn(dst, params, stats):
    dst.weight.data = torch.tensor(np.asarray(params["scale"]))
    dst.bias.data = torch.tensor(np.asarray(params["bias"]))
    dst.running_mean.data = torch.tensor(np.asarray(stats["mean"]))
    dst.running_var.data = torch.tensor(np.asarray(stats["var"]))


def _dense(dst, params):
    dst.weight.data = torch.tensor(np.asarray(params["kernel"]).T.copy())
    dst.bias.data = torch.tensor(np.asarray(params["bias"]))


def copy_resnet20(variables, net: ResNet20) -> None:
    """Our `ResNet(depth=20)` params and running statistics into `net`."""
    p, bs = variables["params"], variables["batch_stats"]
    _conv(net.conv, p["stem"]["conv"]["kernel"])
    _bn(net.bn, p["stem"]["norm"], bs["stem"]["norm"])
    for i, block in enumerate(net.blocks):
        s, b = divmod(i, 3)
        ours, stats = p[f"stage_{s}"][f"block_{b}"], bs[f"stage_{s}"][f"block_{b}"]
        _conv(block.conv1, ours["conv_0"]["kernel"])
        _bn(block.bn1, ours["norm_0"], stats["norm_0"])
        _conv(block.conv2, ours["conv_1"]["kernel"])
        _bn(block.bn2, ours["norm_1"], stats["norm_1"])
    _dense(net.fc, p["head"])


def copy_cnn(variables, net: CNN) -> None:
    """Our `CNN(norm="batch")` params and running statistics into `net`."""
    p, bs = variables["params"], variables["batch_stats"]
    for j, (conv, bn) in enumerate(zip(net.convs, net.bns)):
        _conv(conv, p[f"conv_{j}"]["kernel"])
        _bn(bn, p[f"norm_{j}"], bs[f"norm_{j}"])
    _dense(net.fc, p["head"])
