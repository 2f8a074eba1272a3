"""int8 distillation (training.distill): the decoder learns another encoder's vectors from its own distributions."""

import copy
import json

import torch

import captioner
from captioner.checkpoint import load as load_checkpoint
from training.distill import DistillSet, distill, distill_loss, main as distill_main
from training.train import Trainer

from .conftest import demo_config, tiny_decoder

START, END = 1, 2


def kl_from_teacher(teacher, student, teacher_feats, student_feats, tokens) -> float:
    with torch.no_grad():
        return distill_loss(teacher(teacher_feats, tokens), student(student_feats, tokens), tokens[:, 1:] != 0).item()


def test_distillation_teaches_the_decoder_the_other_vectors_and_keeps_it_on_its_own():
    torch.manual_seed(0)
    images, words = 24, 20
    fp32 = torch.randn(images, 16)
    other = fp32 + 0.7 * torch.randn(images, 16)  # a fixed error per image, as int8's is
    body = torch.randint(3, 3 + words, (images, 6))
    tokens = torch.cat([torch.full((images, 1), START), body, torch.full((images, 1), END)], dim=1)
    decoder = tiny_decoder(3 + words, conditioning="every_step", feature_dim=16)
    decoder.set_feature_stats(fp32)
    teacher = copy.deepcopy(decoder).eval()
    before = kl_from_teacher(teacher, decoder, fp32, other, tokens)
    history = distill(decoder, DistillSet(torch.arange(images), tokens, fp32, other), epochs=30, lr=1e-2,
                      batch_size=8, grad_clip=1.0, seed=0)
    after_other = kl_from_teacher(teacher, decoder, fp32, other, tokens)
    after_own = kl_from_teacher(teacher, decoder, fp32, fp32, tokens)
    assert before > 0.05, before  # the other vectors do change the decoder's distributions
    assert after_other < 0.3 * before, (before, after_other)
    assert after_own < 0.3 * before, (before, after_own)  # and what it gave on its own vectors it still gives
    assert history[-1] < history[0]


def test_distill_command_writes_a_checkpoint_its_onnx_files_still_fit(demo_dir, cache_dir, tmp_path):
    trainer = Trainer(demo_config(demo_dir, cache_dir, tmp_path / "run", epochs=2, final_beam_sizes=[1]))
    trainer.fit()
    trainer.finish()
    source, out = tmp_path / "run" / "model.safetensors", tmp_path / "int8" / "model.safetensors"
    args = ["--model", str(source), "--out", str(out), "--distill-epochs", "1", "--distill-lr", "1e-3",
            "--config", "configs/demo.toml", "--data_dir", str(demo_dir), "--cache_dir", str(cache_dir),
            "--progress", "false", "--num_workers", "0"]
    assert distill_main(args) == 0
    ck = load_checkpoint(out)
    record = ck.info["int8_distillation"]
    assert record["epochs"] == 1 and len(record["kl_int8_by_epoch"]) == 1 and record["kl_int8_by_epoch"][0] > 0
    before = load_checkpoint(source)
    assert ck.vocab == before.vocab and torch.equal(ck.tensors["encoder.blocks.0.depthwise.0.weight"],
                                                    before.tensors["encoder.blocks.0.depthwise.0.weight"])
    assert any(not torch.allclose(before.tensors[k], v, atol=1e-3) for k, v in ck.tensors.items()
               if k.startswith("decoder."))
    assert captioner.load(out, backend="onnx-int8").backend == "onnx-int8"  # the encoder files came along and fit
    made_by = {json.loads(p.read_text())["encoder"] for p in cache_dir.glob("*/index.json")}
    assert any("+onnx-int8:" in e for e in made_by), made_by  # its vectors are cached apart from torch's

    (tmp_path / "run" / "model.encoder-int8.onnx").unlink()
    assert distill_main(args) == 2  # nothing to learn from
