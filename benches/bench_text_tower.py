"""Peak memory of one training step of a method that trains the text tower, at C = 1 000 classes × T = 80
templates against C = 10, with a tiny CLIP (tests/fixtures_tiny.py).

Each case runs in a fresh process and reports the rise of its peak resident memory over one step
(forward over the C·T prompts, loss, backward, optimizer step). The text tower is encoded in chunks
of `methods.TEXT_CHUNK` prompts, each recomputed in the backward pass, so the peak grows with the
(C·T, D) outputs, not with the tower's activations; the `unchunked` case (C = 100) shows what one pass
over every prompt costs.

    python -m pytest benches/bench_text_tower.py -q -s -p no:cacheprovider
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

TEMPLATES = 80
CASE = r"""
import json, resource, sys
sys.path.insert(0, {tests!r})
import torch
import torch.nn.functional as F
from fixtures_tiny import build_model, tiny_model_config
from iimm.engine.finetune import methods
from iimm.engine.finetune.methods import MethodOptions, tune_model

classes, chunk = {classes}, {chunk}
methods.TEXT_CHUNK = chunk
torch.set_num_threads(1)
torch.manual_seed(0)
tuned = tune_model(build_model(tiny_model_config("clip")), "full", MethodOptions()).train()
tokens = torch.randint(1, 49000, (classes * {templates}, 16))
images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, classes, (8,))
opt = torch.optim.SGD([p for p in tuned.parameters() if p.requires_grad], lr=1e-3)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cls = tuned.class_embeddings(tokens, classes)
loss = F.cross_entropy(tuned.logits(tuned.encode_image(images), cls), labels)
loss.backward()
opt.step()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"peak_rise_mib": (peak - before) / 1024}}))
"""


def step_peak_mib(classes: int, chunk: int) -> float:
    tests = str(Path(__file__).resolve().parents[1] / "tests")
    code = CASE.format(tests=tests, classes=classes, chunk=chunk, templates=TEMPLATES)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_rise_mib"]


@pytest.mark.parametrize("classes,chunk,label", [(10, 256, "chunked"), (1000, 256, "chunked"),
                                                 (100, 10 ** 9, "unchunked"), (100, 256, "chunked")])
def test_text_tower_training_step_peak_memory(benchmark, classes, chunk, label):
    peak = benchmark.pedantic(step_peak_mib, args=(classes, chunk), rounds=1, iterations=1)
    benchmark.extra_info.update({"classes": classes, "templates": TEMPLATES, "prompts": classes * TEMPLATES,
                                 "text_chunk": label, "peak_rise_mib": round(peak, 1)})
    print(f"\nC={classes:>5} T={TEMPLATES} ({classes * TEMPLATES:>6} prompts, {label:>9}): "
          f"peak memory +{peak:.1f} MiB over one training step")
