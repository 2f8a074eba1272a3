"""Training end to end on the bundled demo set: it learns, resumes exactly, and caches features correctly."""

import json
import math
import os
import re
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import captioner
from captioner.checkpoint import load as load_checkpoint
from captioner.decoding import WordBans, sequence_log_probs, sequential_decode
from captioner.encoders import create_encoder
from captioner.options import DecodeOptions
from captioner.softmax import AdaptiveSoftmax
from captioner.vocab import tokenize
from training import train as train_mod
from training.config import TrainConfig, load_config
from training.features import build_or_load, decode_workers, is_complete
from training.metrics import quick_scores, sentence_bleu
from training.data import rarely_final_words
from training.datasets import DataError
from training.runtime import own_gpu
from training.scst import Reward, policy_gradient_loss, scst_advantages, scst_loss, scst_samples
from training.train import Trainer, selection_score

from .conftest import LITE0, TRAINING_OVERRIDES, demo_config, tiny_decoder, tiny_vocab

START, END = 1, 2


def train_bleu(trainer: Trainer) -> float:
    caps = [c[0].text for c in trainer.captioner.decode(trainer.data.train_feats, method="greedy")]
    return quick_scores(trainer.val_cider, caps, [list(r.captions) for r in trainer.data.train])["BLEU-4"]


@pytest.mark.slow
def test_training_learns_and_exports_a_usable_model(demo_dir, cache_dir, tmp_path):
    cfg = demo_config(demo_dir, cache_dir, tmp_path, epochs=25, final_beam_sizes=[1])
    trainer = Trainer(cfg)
    (tmp_path).mkdir(exist_ok=True)
    untrained = train_bleu(trainer)
    trainer.fit()
    history = trainer.state["history"]
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    trained = train_bleu(trainer)
    assert trained > 60 and trained > untrained + 40, (untrained, trained)
    metrics = trainer.finish()
    assert metrics["by_beam_size"]["beam1"]["BLEU-4"] > 30
    for name in ("model.safetensors", "best.safetensors", "last.pt", "metrics.jsonl", "metrics.json", "training.png", "model.md"):
        assert (tmp_path / name).is_file(), name
    assert "CHAIR_s" in (tmp_path / "model.md").read_text()  # the card reports hallucination too
    model = captioner.load(tmp_path / "model.safetensors")
    # grounding is fitted and ships on, its caption floor calibrated on the trained decoder's val captions
    assert model.default_options.grounded and model.grounding.min_word_score < 0
    photo = next((demo_dir / "images").glob("*red_circle*"), None) or next((demo_dir / "images").iterdir())
    words = set(model.caption([photo], method="greedy")[0][0].tokens)
    colour, shape = photo.name.split("_")[2:4]
    assert {colour, shape} & words, (photo.name, words)


def test_vocabulary_comes_from_training_captions_only(demo_dir, cache_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    dev_image = (data / "Flickr_8k.devImages.txt").read_text().split()[0]
    with open(data / "Flickr8k.token.txt", "a") as f:
        f.write(f"{dev_image}#5\tzebraword only in dev\n")
    trainer = Trainer(demo_config(data, cache_dir, tmp_path / "out", epochs=1))
    assert "zebraword" not in trainer.data.vocab.stoi and "triangle" in trainer.data.vocab.stoi
    assert any("zebraword" in c for refs in trainer.data.val_refs for c in refs)


def test_resume_after_interruption_matches_an_uninterrupted_run(demo_dir, cache_dir, tmp_path, monkeypatch):
    kw = {"epochs": 4, "decoder.dropout": 0.3, "scheduled_sampling": 0.2, "patience": 10}
    full = Trainer(demo_config(demo_dir, cache_dir, tmp_path / "full", **kw))
    full.out.mkdir(parents=True)
    full.fit()

    out = tmp_path / "broken"
    out.mkdir()
    first = Trainer(demo_config(demo_dir, cache_dir, out, **kw))
    real_epoch = Trainer.run_epoch_xe

    def crash_in_epoch_3(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt("simulated interruption")
        return real_epoch(self, epoch)

    monkeypatch.setattr(Trainer, "run_epoch_xe", crash_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    monkeypatch.setattr(Trainer, "run_epoch_xe", real_epoch)
    second = Trainer(demo_config(demo_dir, cache_dir, out, **kw))
    second.resume()
    assert second.state["epoch"] == 2
    second.fit()
    for (name, a), b in zip(full.decoder.state_dict().items(), second.decoder.state_dict().values()):
        assert torch.equal(a, b), name
    assert [h["train_loss"] for h in full.state["history"]] == [h["train_loss"] for h in second.state["history"]]


def test_blind_baseline_exports_a_model_that_ignores_the_photo(demo_dir, cache_dir, tmp_path):
    trainer = Trainer(demo_config(demo_dir, cache_dir, tmp_path, epochs=3, blind=True, final_beam_sizes=[1]))
    trainer.fit()
    trainer.finish()
    model = captioner.load(tmp_path / "model.safetensors")
    photos = sorted((demo_dir / "images").iterdir())[:4]
    scores = [c[0].log_prob for c in model.caption(photos, method="greedy")]
    assert max(scores) - min(scores) < 1e-4, scores  # the same caption, equally likely, for every photo


def test_rarely_final_words():
    captions = [["a", "dog", "runs"]] * 60 + [["a", "dog"]] * 1 + [["a", "cat", "in", "a", "box"]] * 3
    assert rarely_final_words(captions, min_count=50, max_final_rate=0.02) == ["a", "dog"]  # "dog" ends 1/61
    assert rarely_final_words(captions, min_count=50, max_final_rate=0.01) == ["a"]
    assert rarely_final_words(captions, min_count=100) == []  # "a" is seen 67 times


def test_scst_baselines():
    scores = torch.tensor([[0.2, 0.4, 0.9], [1.0, 1.0, 1.0]])
    mean = scst_advantages(scores, "mean")
    assert mean[0, 0].item() == pytest.approx(0.2 - (0.4 + 0.9) / 2)  # each sample against the other two
    assert mean[0, 2].item() == pytest.approx(0.9 - (0.2 + 0.4) / 2)
    torch.testing.assert_close(mean.sum(1), torch.zeros(2))  # no extra push up or down per image
    assert torch.equal(mean[1], torch.zeros(3))  # equally good samples: nothing to learn
    greedy = scst_advantages(scores, "greedy", torch.tensor([0.5, 1.5]))
    torch.testing.assert_close(greedy, torch.tensor([[-0.3, -0.1, 0.4], [-0.5, -0.5, -0.5]]))
    with pytest.raises(ValueError, match="greedy captions"):
        scst_advantages(scores, "greedy")
    with pytest.raises(ValueError, match="scst_baseline"):
        TrainConfig(scst_baseline="median")
    with pytest.raises(ValueError, match="scst_judge_epochs"):
        TrainConfig(scst_judge_epochs=0)


def test_scst_warm_start_from_a_checkpoint(demo_dir, cache_dir, tmp_path, monkeypatch):
    """--init_from starts SCST exactly where cross-entropy ended; SCST then trains and is scored each epoch
    (here with the discriminability lever, whose term the selection score must include, and whose judge is
    fitted for the configured epochs).
    (Whether the sample reward rises over 4 demo epochs depends on the numeric path, bf16 or fp32, AVX2 or
    AVX-512; what a policy-gradient step must do on every path is tested below on fixed samples.)"""
    xe = Trainer(demo_config(demo_dir, cache_dir, tmp_path / "xe", epochs=4))
    xe.out.mkdir()
    xe.fit()
    best = xe.out / "best.safetensors"
    kw = dict(epochs=0, scst_epochs=2, scst_baseline="mean", scst_lr=5e-4, patience=10, init_from=str(best),
              scst_discriminability_weight=0.1, scst_judge_epochs=7)
    fit_judge, judge_epochs = train_mod.train_retrieval, []
    monkeypatch.setattr(train_mod, "train_retrieval", lambda *a, **k: judge_epochs.append(a[5]) or fit_judge(*a, **k))
    rl = Trainer(demo_config(demo_dir, cache_dir, tmp_path / "rl", **kw))
    start = {k: v.clone() for k, v in rl.decoder.state_dict().items()}
    for name, value in load_checkpoint(best).part("decoder").items():
        assert torch.equal(start[name], value.to(start[name].device)), name  # starts exactly where XE ended
    rl.out.mkdir()
    rl.fit()
    assert [h["phase"] for h in rl.state["history"]] == ["scst"] * 2
    assert judge_epochs == [7]  # fitted once, for the configured epochs
    assert all("val_CIDEr-D" in h for h in rl.state["history"])
    for h in rl.state["history"]:  # the discriminability term is in the reward and in the selection score
        assert -math.log(rl.cfg.scst_batch_images) < h["val_self_retrieval"] < 0
        scores = {"CIDEr-D": h["val_CIDEr-D"], "BLEU-4": h["val_BLEU-4"]}
        assert h["val_selection"] == selection_score(scores, h["val_disfluent_pct"], rl.cfg, h["val_self_retrieval"])
    assert any(not torch.equal(start[k], v) for k, v in rl.decoder.state_dict().items())  # it did update

    with pytest.raises(ValueError, match="vocabulary or decoder config differs"):
        Trainer(demo_config(demo_dir, cache_dir, tmp_path / "other", init_from=str(best), **{"decoder.hidden_dim": 64}))


def test_epochs_are_selected_on_the_reward_scst_maximises(demo_dir, cache_dir, tmp_path):
    """With the fluency levers on, an epoch with lower CIDEr-D but higher BLEU-4 and fewer disfluent captions
    is the better one, as it is for SCST's reward; without them, CIDEr-D alone decides."""
    epochs = [{"CIDEr-D": 54.8, "BLEU-4": 21.7, "disfluent_pct": 4.2}, {"CIDEr-D": 54.0, "BLEU-4": 22.6, "disfluent_pct": 0.3}]
    for levers, expected in (({}, "xe:1"), ({"scst_bleu_weight": 0.5, "scst_disfluency_penalty": 0.5}, "xe:2")):
        trainer = Trainer(demo_config(demo_dir, cache_dir, tmp_path / str(bool(levers)), **levers))
        trainer.out.mkdir()
        real = trainer.validate()  # the real one: val captions decoded, scored, disfluent ones counted
        assert real["selection"] == selection_score(real, real["disfluent_pct"], trainer.cfg)
        for epoch, scores in enumerate(epochs):
            selection = selection_score(scores, scores["disfluent_pct"], trainer.cfg)
            trainer.validate = lambda scores=scores, selection=selection: {**scores, "selection": selection}
            trainer._end_epoch("xe", epoch, {"epoch_seconds": 1.0})
        assert trainer.state["best_epoch"] == expected, levers
        assert trainer.state["bad_epochs"] == (expected == "xe:1")
    assert selection_score(epochs[0], 4.2, trainer.cfg) == pytest.approx(54.8 + 0.5 * 21.7 - 0.5 * 4.2)
    charged = replace(trainer.cfg, scst_hallucination_penalty=0.5)
    assert selection_score(epochs[0], 4.2, charged, chair_s_pct=10.0) == pytest.approx(54.8 + 0.5 * 21.7 - 0.5 * 4.2 - 5.0)


def test_an_epoch_over_the_fluency_limit_never_outranks_one_within_it(demo_dir, cache_dir, tmp_path):
    """SCST epochs of one real run (val CIDEr-D, BLEU-4, % disfluent): the first scores higher on the reward,
    the last keeps agreement errors under 1 %. With the limit the last is kept, and it is what SCST would
    restart from; over-limit epochs still rank among themselves by score."""
    epochs = [{"CIDEr-D": 56.18, "BLEU-4": 22.7, "disfluent_pct": 1.3}, {"CIDEr-D": 55.64, "BLEU-4": 22.36, "disfluent_pct": 1.2},
              {"CIDEr-D": 55.21, "BLEU-4": 22.49, "disfluent_pct": 0.3}, {"CIDEr-D": 54.0, "BLEU-4": 22.0, "disfluent_pct": 0.9}]
    levers = {"scst_bleu_weight": 0.5, "scst_disfluency_penalty": 0.5}
    for limit, expected in ((0.0, ["xe:1", "xe:1", "xe:1", "xe:1"]), (1.0, ["xe:1", "xe:1", "xe:3", "xe:3"])):
        trainer = Trainer(demo_config(demo_dir, cache_dir, tmp_path / str(limit), select_max_disfluent_pct=limit, **levers))
        trainer.out.mkdir()
        kept = []
        for epoch, scores in enumerate(epochs):
            selection = selection_score(scores, scores["disfluent_pct"], trainer.cfg)
            trainer.validate = lambda scores=scores, selection=selection: {**scores, "selection": selection}
            trainer._end_epoch("xe", epoch, {"epoch_seconds": 1.0})
            kept.append(trainer.state["best_epoch"])
        assert kept == expected, limit
        assert [r["val_selection"] for r in trainer.state["history"]] == [
            selection_score(e, e["disfluent_pct"], trainer.cfg) for e in epochs]  # the logged score is the plain one


BANS = WordBans(END, suppress=(0, 1, 3), no_end_after=(5, 6), min_length=1)


def test_scst_samples_obey_the_decoding_bans():
    dec = tiny_decoder(12, seed=4)
    with torch.no_grad():
        dec.out.bias[END] = 3.0  # eager to stop: the bans have work to do
    vocab = tiny_vocab(8)
    torch.manual_seed(0)
    seqs = scst_samples(dec, torch.randn(6, 1280), 5, 8, vocab, BANS)
    assert seqs.shape[0] == 30 and dec.training is False  # tiny_decoder is in eval mode; it stays so
    for row in seqs.tolist():
        words = row[: row.index(END)] if END in row else [w for w in row if w]
        assert words, row  # never an empty caption
        assert not set(words) & set(BANS.suppress)
        if END in row:
            assert words[-1] not in BANS.no_end_after and all(w == 0 for w in row[row.index(END) + 1 :])
    torch.manual_seed(0)
    assert torch.equal(scst_samples(dec, torch.randn(6, 1280), 5, 8, vocab, BANS), seqs)  # global RNG decides


def test_sequence_log_probs_are_decodings_distribution():
    """The teacher-forced scorer gives the numbers step-by-step decoding computes, and with bans a
    distribution over the allowed words alone (what the sampler draws from)."""
    dec = tiny_decoder(12, seed=5)
    v = torch.randn(4, 1280, generator=torch.Generator().manual_seed(5))
    hyps = sequential_decode(dec, v, START, WordBans(END, min_length=0), DecodeOptions(max_length=6))
    rows = [h.tokens + [END] * h.finished for h in hyps]
    seqs = torch.zeros(4, max(map(len, rows)), dtype=torch.long)
    for i, r in enumerate(rows):
        seqs[i, : len(r)] = torch.tensor(r)
    with torch.no_grad():
        free = sequence_log_probs(dec, v, seqs, START, WordBans(END, min_length=0))
    torch.testing.assert_close(free.sum(1), torch.tensor([h.log_prob for h in hyps]), rtol=1e-4, atol=1e-4)

    first = torch.arange(12)[:, None]  # every possible first word of an image's caption
    with torch.no_grad():
        lp = sequence_log_probs(dec, v[:1].expand(12, -1), first, START, BANS, pad_id=-1)[:, 0]
    banned = list(BANS.suppress) + [END]  # <end> too: min_length 1
    assert torch.isinf(lp[banned]).all()
    allowed = [w for w in range(12) if w not in banned]
    assert abs(lp[allowed].logsumexp(0).item()) < 1e-5


def test_policy_gradient_step_favours_samples_that_beat_their_baseline():
    """One SGD step on the REINFORCE loss must raise sum(advantage x log p(sample)) for fixed samples, by
    about lr x |grad|^2 (first order). lr is small enough that the second-order term is under 1 % of that
    (measured (loss drop) / (lr |grad|^2) = 0.9995-1.0002 over 6 seeds, on AVX-512 and on AVX2 kernels), so
    the 0.5 margin is far from noise."""
    dec = tiny_decoder(12, seed=6).train()  # dropout is 0 in tiny decoders: the loss is deterministic
    vocab = tiny_vocab(8)
    feats = torch.randn(4, 1280, generator=torch.Generator().manual_seed(6))
    torch.manual_seed(6)
    seqs = scst_samples(dec, feats, 4, 8, vocab, BANS)
    advantages = scst_advantages(torch.rand(4, 4, generator=torch.Generator().manual_seed(7)), "mean").reshape(-1)
    rep = feats.repeat_interleave(4, 0)
    loss = policy_gradient_loss(dec, rep, seqs, advantages, START, BANS)
    dec.zero_grad()
    loss.backward()
    grads = [p.grad.clone() for p in dec.parameters() if p.grad is not None]
    sq_norm = sum(float((g * g).sum()) for g in grads)
    lr = 1e-3
    with torch.no_grad():
        for p in dec.parameters():
            if p.grad is not None:
                p -= lr * p.grad
        after = policy_gradient_loss(dec, rep, seqs, advantages, START, BANS)
        weighted = lambda: (advantages * sequence_log_probs(dec, rep, seqs, START, BANS).sum(1)).sum()  # noqa: E731
        improved = weighted()
        for p, g in zip([p for p in dec.parameters() if p.grad is not None], grads):
            p += lr * g
        assert improved > weighted()  # better samples became likelier relative to worse ones
    assert loss.item() - after.item() > 0.5 * lr * sq_norm > 0, (loss.item() - after.item(), lr * sq_norm)


class CountingEncoder(torch.nn.Module):
    def __init__(self, inner, fail_after=None):
        super().__init__()
        self.inner, self.calls, self.fail_after, self.out_dim = inner, 0, fail_after, inner.out_dim

    def forward(self, x):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("interrupted extraction")
        return self.inner(x)


def test_image_decoding_workers_only_take_cores_the_encoder_leaves_free(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert decode_workers(4, "cpu") == 4  # 8 cores, 2 for the encoder: 6 free
        assert decode_workers(8, "cpu") == 6
        torch.set_num_threads(8)
        assert decode_workers(4, "cpu") == 0  # every core runs the encoder: decode in the main process
        assert decode_workers(4, "cuda") == 4  # the encoder runs on the GPU: the cores are free
    finally:
        torch.set_num_threads(threads)


def test_torchrun_process_without_a_gpu_of_its_own_is_refused_with_the_way_out(monkeypatch):
    """NCCL cannot put two ranks on one GPU; its own error says nothing of --nproc_per_node or --device."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert own_gpu(0) == 0 and own_gpu(1) == 1
    with pytest.raises(RuntimeError, match=r"process 2 .* no GPU of its own \(2 visible\).*--nproc_per_node.*--device cpu"):
        own_gpu(2)


def test_feature_cache_reuse_invalidation_and_resume(demo_dir, tmp_path):
    torch.manual_seed(0)
    enc = create_encoder("efficientnet_lite0").eval()
    paths = sorted((demo_dir / "images").iterdir())[:10]
    pre = LITE0.preprocess(size=64)
    kw = dict(batch_size=4, num_workers=0, progress=False)

    clean = build_or_load(tmp_path / "a", enc, "lite0:x", pre, paths, demo_dir, **kw)
    reference = clean.tensor(paths)
    assert reference.shape == (10, 1280) and is_complete(clean.root)

    counting = CountingEncoder(enc)
    again = build_or_load(tmp_path / "a", counting, "lite0:x", pre, paths, demo_dir, **kw)
    assert counting.calls == 0 and torch.equal(again.tensor(paths), reference)  # reused: no CNN forward

    changed = build_or_load(tmp_path / "a", counting, "lite0:x", replace(pre, size=96), paths, demo_dir, **kw)
    assert counting.calls > 0 and changed.root != clean.root  # preprocessing changed: rebuilt
    other = build_or_load(tmp_path / "a", CountingEncoder(enc), "lite0:y", pre, paths, demo_dir, **kw)
    assert other.root not in (clean.root, changed.root)  # other weights: rebuilt

    flaky = CountingEncoder(enc, fail_after=1)
    with pytest.raises(KeyboardInterrupt):
        build_or_load(tmp_path / "b", flaky, "lite0:x", pre, paths, demo_dir, **kw)
    resumed_enc = CountingEncoder(enc)
    resumed = build_or_load(tmp_path / "b", resumed_enc, "lite0:x", pre, paths, demo_dir, **kw)
    assert resumed_enc.calls == 2  # 10 images in batches of 4: the first batch was kept
    torch.testing.assert_close(resumed.tensor(paths), reference)
    index = json.loads((resumed.root / "index.json").read_text())
    assert index["images"][0].startswith("images/")  # relative to the data folder


def test_missing_data_stops_with_instructions(tmp_path):
    cfg = TrainConfig(data_dir=str(tmp_path / "nope"), out_dir=str(tmp_path / "o"), progress=False)
    with pytest.raises(DataError, match="Flickr8k.token.txt"):
        Trainer(cfg)


def test_config_toml_and_command_line_overrides(tmp_path):
    import argparse

    from training import config as config_mod

    parser = argparse.ArgumentParser()
    config_mod.add_arguments(parser)
    args = parser.parse_args(["--config", "configs/flickr8k.toml", "--lr", "0.01", "--final_beam_sizes", "2,4",
                              "--hflip_average", "true", "--decoder.hidden_dim", "96"])
    cfg = config_mod.from_args(args)
    assert cfg.lr == 0.01 and cfg.final_beam_sizes == [2, 4] and cfg.hflip_average is True
    # the [decoder] table fills the decoder's own config; a flag overrides one field and keeps the others
    assert cfg.val_split == "dev" and cfg.decoder.hidden_dim == 96 and cfg.decoder.conditioning == "every_step"
    assert load_config("configs/demo.toml").decoder.hidden_dim == 256
    (tmp_path / "bad.toml").write_text("learning_rate = 1\n[decoder]\nhidden = 3\n")
    with pytest.raises(ValueError, match="unknown config keys: decoder.hidden, learning_rate"):
        load_config(tmp_path / "bad.toml")
    with pytest.raises(ValueError, match="come from the data"):
        load_config(overrides={"decoder.vocab_size": 10})
    assert load_config("configs/coco.toml").format == "karpathy"


def test_a_dotted_config_key_names_its_fields_type():
    """`fields.field_type`: what a `--vary model.hidden_dim=...` value (bench-charlm) is parsed as."""
    from captioner import fields

    assert fields.field_type(TrainConfig, "lr") is float and fields.field_type(TrainConfig, "decoder.cell") is str
    for key in ("learning_rate", "decoder", "lr.x", "decoder.hidden"):
        with pytest.raises(ValueError, match=f"unknown config key: {key}$"):
            fields.field_type(TrainConfig, key)


def test_one_default_for_each_model_hyperparameter():
    """A training config holds its model's config (no copy of its fields), so the defaults are the model's."""
    import dataclasses

    from captioner.decoder import DecoderConfig
    from charlm.model import CharLMConfig
    from charlm.train import CharTrainConfig

    for train_cls, model_cls in ((TrainConfig, DecoderConfig), (CharTrainConfig, CharLMConfig)):
        train_fields = {f.name for f in dataclasses.fields(train_cls)}
        copied = train_fields & {f.name for f in dataclasses.fields(model_cls)}
        assert not copied, f"{train_cls.__name__} repeats {model_cls.__name__}'s {sorted(copied)}"
        nested = [f.name for f in dataclasses.fields(train_cls) if f.type in (model_cls, model_cls.__name__)]
        assert len(nested) == 1 and getattr(train_cls(), nested[0]) == model_cls()


@pytest.mark.slow
def test_torchrun_ddp_on_cpu(demo_dir, cache_dir, tmp_path):
    """Two processes with PyTorch's own distributed engine (gloo on CPU), XE then SCST, end to end, with an
    adaptive softmax whose rare-word clusters are empty in many of a rank's batches (every weight must still
    get a gradient on every rank)."""
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "training.train",
           "--config", "configs/demo.toml", "--data_dir", str(demo_dir), "--cache_dir", str(tmp_path / "cache"),
           "--out_dir", str(out), "--epochs", "3", "--scst_epochs", "1", "--progress", "false", "--threads", "1",
           "--device", "cpu",  # gloo, also where a GPU is present
           "--final_beam_sizes", "1", "--decoder.softmax_head", "6",  # 26 words: clusters [6, 24), [24, 26)
           *(["--amp", "false"] if TRAINING_OVERRIDES.get("amp") is False else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["phase"] for x in lines] == ["xe", "xe", "xe", "scst"]
    assert "x2" in proc.stderr  # the log names the world size
    decoder = captioner.load(out / "model.safetensors").decoder
    assert decoder.cfg.cell == "lstm" and isinstance(decoder.out, AdaptiveSoftmax) and len(decoder.out.tail) >= 2


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_node_torchrun_keeps_ranks_identical_and_matches_one_process(demo_dir, tmp_path):
    """Two torchrun "nodes" on loopback (c10d rendezvous, one process each, 4 captions per rank) hold
    bit-identical weights after every epoch (each rank logs a digest; the run also checks it itself), and
    end where one process with the global batch of 8 does. Only float summation order differs, and Adam
    amplifies it as training goes on: relative weight difference measured 1.1e-7 after 1 epoch, 1.5e-5
    after 2, 2.5e-3 after 3 (this machine, fp32). Two epochs, asked < 1e-3."""
    import subprocess
    import sys

    root, epochs = Path(__file__).parent.parent, 2
    common = ["-m", "training.train", "--config", "configs/demo.toml", "--data_dir", str(demo_dir),
              "--cache_dir", str(tmp_path / "cache"), "--epochs", str(epochs), "--scst_epochs", "0", "--decoder.dropout", "0",
              "--progress", "false", "--threads", "1", "--final_beam_sizes", "1", "--amp", "false", "--num_workers", "0",
              "--device", "cpu"]  # gloo on loopback, also where a GPU is present
    port = free_port()
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=two-node-test", *common, "--out_dir", str(tmp_path / "ddp"),
            "--batch_size", "4"]
    nodes = [subprocess.Popen(node, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root) for _ in range(2)]
    logs = [n.communicate(timeout=600) for n in nodes]
    assert all(n.returncode == 0 for n in nodes), "\n".join(err[-3000:] for _, err in logs)
    digests: dict[str, dict[int, str]] = {}
    for _, err in logs:
        for rank, label, digest in re.findall(r"rank (\d) (xe epoch \d+) weights ([0-9a-f]+)", err):
            digests.setdefault(label, {})[int(rank)] = digest
    assert sorted(digests) == [f"xe epoch {i}" for i in range(1, epochs + 1)], digests
    assert all(sorted(d) == [0, 1] and d[0] == d[1] for d in digests.values()), digests

    single = subprocess.run([sys.executable, *common, "--out_dir", str(tmp_path / "one"), "--batch_size", "8"],
                            capture_output=True, text=True, timeout=600, cwd=root)
    assert single.returncode == 0, single.stderr[-3000:]
    weights = [torch.load(tmp_path / d / "last.pt", weights_only=True)["decoder"] for d in ("ddp", "one")]
    diff = sum(float((weights[0][k] - weights[1][k]).float().norm() ** 2) for k in weights[1]) ** 0.5
    norm = sum(float(v.float().norm() ** 2) for v in weights[1].values()) ** 0.5
    assert diff / norm < 1e-3, diff / norm
    print(f"relative weight difference, 2 nodes x 4 vs 1 x 8: {diff / norm:.2e}")


def test_training_reports_the_captions_evaluate_gives_for_the_exported_model(demo_dir, cache_dir, tmp_path, capsys):
    """One decoding path: what training reports for the val split (captions and scores) is exactly what
    `training.evaluate` says of the exported checkpoint with its default decoding; then overrides work."""
    from training import evaluate

    trainer = Trainer(demo_config(demo_dir, cache_dir, tmp_path, epochs=3, final_beam_sizes=[1],
                                  length_penalty=0.7, no_repeat_ngram_size=2, block_bad_endings=True))
    trainer.fit()
    reported = trainer.finish()
    common = ["--model", str(tmp_path / "model.safetensors"), "--format", "flickr8k", "--data-dir", str(demo_dir),
              "--split", "dev", "--num-workers", "0"]
    assert evaluate.main(common + ["--out", str(tmp_path / "d.json"), "--captions-out", str(tmp_path / "d_caps.json")]) == 0
    assert json.loads((tmp_path / "d_caps.json").read_text()) == json.loads((tmp_path / "val_captions.json").read_text())
    default = json.loads((tmp_path / "d.json").read_text())
    assert {k: default[k] for k in reported["default"]} == reported["default"]
    assert default["beam_size"] == 3 and default["length_penalty"] == 0.7 and default["no_repeat_ngram_size"] == 2
    assert captioner.load(tmp_path / "model.safetensors").metrics == reported  # stored in the checkpoint too

    args = common + ["--beam-size", "3", "--length-penalty", "0.5", "--no-repeat-ngram-size", "2",
                     "--out", str(tmp_path / "m.json"), "--captions-out", str(tmp_path / "c.json")]
    assert evaluate.main(args) == 0
    result = json.loads((tmp_path / "m.json").read_text())
    assert result["images"] == len(trainer.data.val) and result["beam_size"] == 3
    assert result["length_penalty"] == 0.5 and result["no_repeat_ngram_size"] == 2
    assert 0 <= result["BLEU-4"] <= 100 and result["CIDEr"] >= 0
    captions = json.loads((tmp_path / "c.json").read_text())
    assert len(captions) == result["images"] and all(c["caption"] for c in captions)

    assert evaluate.main(args[:4] + ["--data-dir", str(tmp_path / "nowhere")]) == 2
    assert "error:" in capsys.readouterr().err


def test_reward_adds_bleu_and_charges_disfluency():
    refs = [["a dog runs on the grass", "a brown dog is running"]]
    plain, both = Reward(refs), Reward(refs, bleu_weight=0.5, disfluency_penalty=2.0)
    fluent, broken = "a brown dog is running".split(), "a dog and a cat is running".split()
    assert both.text_terms(fluent, 0) == pytest.approx(plain.text_terms(fluent, 0) + 0.5 * sentence_bleu(fluent, [r.split() for r in refs[0]]))
    assert both.text_terms(broken, 0) == pytest.approx(plain.text_terms(broken, 0) + 0.5 * sentence_bleu(broken, [r.split() for r in refs[0]]) - 2.0)


def test_reward_charges_objects_no_reference_names():
    refs = [["a man rides a bicycle", "a person on a bike"], ["a dog runs"]]
    plain, charged = Reward(refs), Reward(refs, hallucination_penalty=1.5)
    supported, invented = "a boy rides a bike".split(), "a man rides a bike with a dog".split()
    assert charged.text_terms(supported, 0) == pytest.approx(plain.text_terms(supported, 0))  # boy: person; bike: bicycle
    assert charged.text_terms(invented, 0) == pytest.approx(plain.text_terms(invented, 0) - 1.5)  # no reference of photo 0 names a dog
    assert charged.text_terms("a dog runs".split(), 1) == pytest.approx(plain.text_terms("a dog runs".split(), 1))


def test_scst_cross_entropy_term_is_the_human_captions_cross_entropy():
    """scst_xe_weight w adds exactly w x the teacher-forced cross-entropy of the given human captions."""
    dec = tiny_decoder(12, seed=8)
    vocab = tiny_vocab(8)
    feats = torch.randn(3, 1280, generator=torch.Generator().manual_seed(8))
    human = torch.tensor([[START, 4, 5, END], [START, 7, END, 0], [START, 6, 4, END]])
    reward = Reward([["w1 w2"], ["w3"], ["w4 w5"]])
    cfg = TrainConfig(scst_samples=3, scst_baseline="mean", scst_max_words=5)
    losses = []
    for w in (0.0, 0.7):
        torch.manual_seed(3)
        losses.append(scst_loss(dec, feats, [0, 1, 2], vocab, reward, replace(cfg, scst_xe_weight=w), BANS, human)[0])
    logits = dec(feats, human)
    xe = torch.nn.functional.cross_entropy(logits.reshape(-1, 12), human[:, 1:].reshape(-1), ignore_index=0)
    torch.testing.assert_close(losses[1] - losses[0], 0.7 * xe)


def test_one_caption_each_draws_a_caption_of_that_image(demo_dir, cache_dir, tmp_path):
    data = Trainer(demo_config(demo_dir, cache_dir, tmp_path, epochs=1)).data
    images = torch.tensor([3, 0, 3, 1])
    torch.manual_seed(0)
    rows = data.one_caption_each(images)
    for image, row in zip(images.tolist(), rows.tolist()):
        own = {tuple(t[: len(row)]) for t in data.tokens[data.img_idx == image].tolist()}
        assert tuple(row) in own, (image, row)
    drawn = {tuple(data.one_caption_each(torch.tensor([0])).tolist()[0]) for _ in range(40)}
    assert len(drawn) > 1  # not always the first caption


# -- COCO scale, simulated (training.synthetic, bench/scale.py) ---------------------------------------------
def test_simulated_coco_reads_as_coco_and_trains_without_image_files(demo_dir, cache_dir, tmp_path):
    from pycocotools.coco import COCO

    from training.synthetic import CAPTIONS_PER_PHOTO, generate

    source = demo_config(demo_dir, cache_dir, tmp_path / "source")
    target = generate(source, tmp_path / "coco", photos=60, val_photos=12, seed=0)
    coco = COCO(str(tmp_path / "coco" / "annotations" / "captions_train2014.json"))
    assert len(coco.imgs) == 48 and len(coco.anns) == 48 * CAPTIONS_PER_PHOTO
    assert all(len(coco.imgToAnns[i]) == CAPTIONS_PER_PHOTO for i in coco.imgs)
    lines = (demo_dir / "Flickr8k.token.txt").read_text().splitlines()
    demo_words = {w for line in lines for w in tokenize(line.partition("\t")[2])}
    assert all({w for w in a["caption"].split() if not w.startswith("zz")} <= demo_words for a in coco.anns.values())
    assert not (tmp_path / "coco" / "train2014").exists()  # no photos: every vector comes from the feature cache
    cfg = replace(target, out_dir=str(tmp_path / "run"), epochs=1, max_batches_per_epoch=2, batch_size=8)
    (tmp_path / "run").mkdir()
    trainer = Trainer(cfg)
    assert len(trainer.data.train) == 48 and len(trainer.data.val) == 12
    assert trainer.data.train_feats.abs().sum() > 0
    trainer.fit()
    epoch = trainer.state["history"][0]
    assert epoch["batches"] == 2 and epoch["epoch_batches"] == math.ceil(48 * CAPTIONS_PER_PHOTO / 8)
    assert {"read records", "vocabulary", "feature cache", "grounding", "xe epoch", "validate"} <= set(trainer.clock.phases)


def test_simulated_vocabulary_grows_along_heaps_law_with_reused_new_words():
    import numpy as np

    from training.synthetic import Lexicon

    rng = np.random.default_rng(0)
    zipf = 1 / np.arange(1, 20_001)
    source = [[f"w{j}" for j in rng.choice(20_000, size=8, p=zipf / zipf.sum())] for _ in range(2_000)]
    lexicon = Lexicon.from_source(source)
    assert 0.3 < lexicon.beta < 1.0
    out = [lexicon.fill(source[i % 2_000], rng) for i in range(40_000)]
    distinct = len({w for words in out for w in words})
    expected = lexicon.k * (8 * 40_000) ** lexicon.beta
    source_words = len({w for words in source for w in words})
    assert distinct > 2 * source_words and abs(distinct - expected) / expected < 0.02  # on the fitted curve
    counts = Counter(w for words in out for w in words if w.startswith("zz"))
    assert sum(n >= 5 for n in counts.values()) > 50  # new words are reused, so a min_count vocabulary grows too


def test_recombined_captions_keep_their_photo_words_and_lengths():
    import numpy as np

    from training.synthetic import recombine

    rng = np.random.default_rng(1)
    a, b = "a dog runs on the grass".split(), "a black dog jumps over the red fence today".split()
    outs = [recombine(a, b, rng) for _ in range(50)]
    assert all(len(a) <= len(o) <= len(b) and set(o) <= set(a) | set(b) for o in outs)
    assert len({tuple(o) for o in outs}) > 1  # more than one join point is used
    assert recombine(a, "two cats".split(), rng) == a  # nothing shared: the first caption as it is


def test_phase_clock_times_each_phase_on_its_own_and_sees_an_inner_peak_from_the_outer():
    import mmap
    import time

    from training.phases import PhaseClock

    clock = PhaseClock()
    with clock("outer"):
        with clock("inner"):
            block = mmap.mmap(-1, 64 * 2**20)  # 64 MB of fresh pages, touched, then given back to the OS
            block.write(b"x" * len(block))
            block.close()
            time.sleep(0.2)
        time.sleep(0.05)
    with clock("inner"):
        pass
    outer, inner = clock.phases["outer"], clock.phases["inner"]
    assert outer.calls == 1 and inner.calls == 2
    assert 0.05 <= outer.seconds < 0.2 <= inner.seconds  # the outer's own time, without the inner's
    if os.path.exists("/proc/self/clear_refs"):  # Linux: per-phase peaks
        assert outer.peak_rss_bytes >= inner.peak_rss_bytes > 0
        with clock("after"):
            pass
        assert clock.phases["after"].peak_rss_bytes < inner.peak_rss_bytes - 32 * 2**20  # the peak was reset
