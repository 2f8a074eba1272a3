"""Shared fixtures: tiny models built in-process, real photos from tests/fixtures (CC0, see its README)."""

from __future__ import annotations

import io
from pathlib import Path

import jsonschema
import pytest
import torch
from referencing import Registry, Resource

from captioner.decoder import CaptionDecoder, DecoderConfig
from captioner.encoders import create_encoder, encoder_spec
from captioner.model import Captioner
from captioner.vocab import SPECIALS, Vocabulary
from service.openapi import openapi_spec
from training import demo
from training.config import TrainConfig, load_config

FIXTURES = Path(__file__).parent / "fixtures"
LITE0 = encoder_spec("efficientnet_lite0")

# Config fields every training test applies (see --amp): the numeric path a run takes is the CPU's to choose.
TRAINING_OVERRIDES: dict = {}


def pytest_addoption(parser):
    parser.addoption("--amp", choices=("auto", "false"), default="auto",
                     help="training tests: 'auto' trains as the config says (bf16 autocast where the CPU runs bf16 "
                          "natively), 'false' in fp32, the path of CPUs without bf16 (make test-portable)")


def pytest_configure(config):
    if config.getoption("--amp") == "false":
        TRAINING_OVERRIDES["amp"] = False


@pytest.fixture(scope="session")
def cat_photo() -> Path:
    return FIXTURES / "chelsea.jpg"


@pytest.fixture(scope="session")
def coffee_photo() -> Path:
    return FIXTURES / "coffee.jpg"


def tiny_vocab(n_words: int = 20) -> Vocabulary:
    return Vocabulary([*SPECIALS, *(f"w{i}" for i in range(n_words))])


def tiny_decoder(vocab_size: int, cell: str = "lstm", conditioning: str = "first_input", feature_dim: int = 1280,
                 seed: int = 0, hidden: int = 32, layers: int = 1) -> CaptionDecoder:
    torch.manual_seed(seed)
    dec = CaptionDecoder(DecoderConfig(vocab_size=vocab_size, feature_dim=feature_dim, cell=cell, embed_dim=16,
                                       hidden_dim=hidden, num_layers=layers, dropout=0.0, conditioning=conditioning))
    with torch.no_grad():  # sharpen the random output layer so decoding has real preferences
        dec.out.weight.mul_(8.0)
    return dec.eval()


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """The bundled synthetic demo set (training.demo), written once per session."""
    return demo.write(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One feature cache for every training test: each set of vectors is extracted once."""
    return tmp_path_factory.mktemp("cache")


def demo_config(demo_dir, cache_dir, out, **kw) -> TrainConfig:
    """configs/demo.toml on `demo_dir`; `kw` may set the decoder's fields by dotted name (**{"decoder.dropout": 0})."""
    return load_config("configs/demo.toml", {"data_dir": str(demo_dir), "cache_dir": str(cache_dir), "out_dir": str(out),
                                             "progress": False, "scst_epochs": 0, **TRAINING_OVERRIDES, **kw})


@pytest.fixture(scope="session")
def lite0_pretrained():
    return create_encoder("efficientnet_lite0", pretrained=True, with_head=True).eval()


@pytest.fixture(scope="session")
def small_captioner() -> Captioner:
    """A real-architecture captioner with an untrained decoder: fast, deterministic."""
    torch.manual_seed(0)
    vocab = tiny_vocab(30)
    encoder = create_encoder("efficientnet_lite0", pretrained=False)
    return Captioner(encoder, tiny_decoder(len(vocab)), vocab, LITE0.preprocess(), "efficientnet_lite0")


_SPEC_REGISTRY = Registry().with_resource("urn:spec", Resource.opaque(openapi_spec()))


def check_schema(body: dict, name: str) -> None:
    """Validate a real response body against the OpenAPI document's component schema `name`."""
    jsonschema.Draft202012Validator({"$ref": f"urn:spec#/components/schemas/{name}"},
                                    registry=_SPEC_REGISTRY).validate(body)


def post_multipart(client, data: bytes, **fields):
    """POST a photo to /v1/captions as a form upload (the web page's way), with option fields."""
    return client.post("/v1/captions", data={"image": (io.BytesIO(data), "photo.jpg"), **fields},
                       content_type="multipart/form-data")
