"""ResNet-50/101/152 (He et al. 2016) with torchvision's parameter names, in plain torch.

Serving loads these from our own checkpoint, so it needs no torchvision. Weights for training come from
a local file in torchvision's format: the path you give, or torchvision's cache (never downloaded here).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

DEPTHS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3), "resnet152": (3, 8, 36, 3)}
# torchvision's IMAGENET1K_V2 files for 50/101 and V1 for 152, as they land in its cache.
TORCHVISION_FILES = {
    "resnet50": "resnet50-11ad3fa6.pth",
    "resnet101": "resnet101-cd907fc2.pth",
    "resnet152": "resnet152-394f9c45.pth",
}


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    """Returns the 2048-d globally pooled vector; `classify` adds the ImageNet head (`fc`)."""

    out_dim = 2048

    def __init__(self, depths: tuple[int, int, int, int], num_classes: int = 1000, with_head: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (n, width) in enumerate(zip(depths, (64, 128, 256, 512))):
            blocks = []
            for j in range(n):
                blocks.append(Bottleneck(cin, width, 2 if (j == 0 and i > 0) else 1))
                cin = width * Bottleneck.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(self.out_dim, num_classes) if with_head else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=(2, 3))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        if self.fc is None:
            raise RuntimeError("this encoder was built without its ImageNet head")
        return self.fc(self.forward(x))


def torchvision_cache_dir() -> Path:
    """torch.hub's checkpoint folder ($TORCH_HOME/hub/checkpoints), computed without importing torchvision."""
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch"
    )
    return Path(torch_home) / "hub" / "checkpoints"


def resolve_weights(name: str, path: str | Path | None) -> Path:
    candidate = Path(path) if path else torchvision_cache_dir() / TORCHVISION_FILES[name]
    if not candidate.is_file():
        raise FileNotFoundError(
            f"{name} ImageNet weights not found at {candidate}. This project never downloads weights: copy "
            f"torchvision's {TORCHVISION_FILES[name]} there, or pass its path (encoder_weights=...)."
        )
    return candidate


def load_torchvision_weights(model: ResNet, path: Path) -> ResNet:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if model.fc is None:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = model.state_dict()
    for k, v in state.items():
        if k in own and own[k].shape != v.shape:
            raise ValueError(f"{path}: {k} has shape {tuple(v.shape)}, model expects {tuple(own[k].shape)}")
    model.load_state_dict(state, strict=True)
    return model
