"""Stopping a fine-tune: SIGINT / SIGTERM wherever they land, one training loader, the finished epochs kept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors import safe_open

from fixtures_finetune import one_patch_clip_config
from fixtures_tiny import write_local_dir
from iimm.engine.embedding.data import load_image_dataset
from iimm.engine.embedding.models import load_model
from iimm.engine.finetune import MethodOptions, TrainConfig, tune_model
from iimm.engine.finetune.evaluate import prompt_tokens
from iimm.engine.finetune.trainer import train_seed

TEMPLATE = "a photo of the number: {}."
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def epochs_done(path) -> int:
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["state"])["epochs_done"]


def setup_lora(tiny_model_dir, digits_png_dir):
    ds = load_image_dataset(str(digits_png_dir))
    lm = load_model(f"local-dir:{tiny_model_dir}")
    torch.manual_seed(0)
    tuned = tune_model(lm.model, "lora", MethodOptions(rank=2))
    return ds, lm, tuned, prompt_tokens(lm.tokenizer, ds.classnames, [TEMPLATE], lm.device)


def test_an_interrupt_swallowed_where_it_landed_still_stops_training(tmp_path, tiny_model_dir, digits_png_dir):
    """Python drops a KeyboardInterrupt raised inside an at-fork hook (a DataLoader worker's fork); a SIGINT
    whose exception is lost like that must still stop the run at the next batch, keeping the finished epoch."""
    ds, lm, tuned, tokens = setup_lora(tiny_model_dir, digits_png_dir)
    cfg = TrainConfig(epochs=4, lr=1e-3, batch_size=50).resolved("lora")
    lost = []

    def swallowing(stage, done, total, metrics=None):
        if stage == "epoch finished" and done == 1:
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)  # the handler runs here
            except KeyboardInterrupt:
                lost.append(done)

    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # whatever an earlier test installed
    try:
        with pytest.raises(KeyboardInterrupt):
            train_seed(tuned, ds, None, tokens, 10, lm.preprocess_train, lm.preprocess, cfg, seed=0,
                       folder=tmp_path / "s", checkpoint_info={}, workers=0, progress=swallowing)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    finally:
        signal.signal(signal.SIGINT, before)
    assert lost == [1] and epochs_done(tmp_path / "s" / "last.safetensors") == 1


def test_one_training_loader_serves_every_epoch_and_workers_do_not_change_the_result(
        tmp_path, tiny_model_dir, digits_png_dir, monkeypatch):
    built = []
    real = torch.utils.data.DataLoader

    class Counting(real):
        def __init__(self, *a, **kw):
            built.append(kw.get("num_workers"))
            super().__init__(*a, **kw)

    monkeypatch.setattr(torch.utils.data, "DataLoader", Counting)
    cfg = TrainConfig(epochs=3, lr=1e-2, batch_size=50).resolved("lora")
    trained = []
    for workers in (0, 1):
        ds, lm, tuned, tokens = setup_lora(tiny_model_dir, digits_png_dir)
        train_seed(tuned, ds, None, tokens, 10, lm.preprocess_train, lm.preprocess, cfg, seed=0,
                   folder=tmp_path / str(workers), checkpoint_info={}, workers=workers)
        trained.append({n: p.detach().clone() for n, p in tuned.named_trainable().items()})
    assert built == [0, 1]  # one loader per training run, not one per epoch
    assert all(torch.equal(trained[0][n], trained[1][n]) for n in trained[0])  # augmentation seeded per image


def test_iimm_finetune_stops_on_sigint_and_sigterm_and_resumes(tmp_path, digits_png_dir):
    model = f"local-dir:{write_local_dir(tmp_path / 'model', one_patch_clip_config())}"
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "iimm.cli.main", "finetune", "--model", model, "--data", str(digits_png_dir),
           "--method", "lora", "--rank", "2", "--epochs", "40", "--batch-size", "16", "--lr", "1e-3",
           "--test-fraction", "0.25", "--workers", "1", "--backend", "torch", "--template", TEMPLATE,
           "--store", str(store)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = []
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
        seen = []
        for line in proc.stderr:  # the epoch line, then the signal at once: the moment of the reported hang
            seen.append(line)
            if " epoch " in line and ": loss " in line:
                break
        else:
            pytest.fail("no epoch finished: " + "".join(seen[-5:]))
        sent = time.monotonic()
        proc.send_signal(sig)
        rest = proc.communicate(timeout=60)[1]
        assert proc.returncode == code, "".join(seen[-3:]) + rest
        assert time.monotonic() - sent < 30
        states = list(store.glob("finetune/*/seed-0/last.safetensors"))
        assert len(states) == 1
        done.append(epochs_done(states[0]))
        assert 1 <= done[-1] < 40
    assert done[1] > done[0]  # the second run went on from the first one's last finished epoch
    assert "resuming" in "".join(seen)
