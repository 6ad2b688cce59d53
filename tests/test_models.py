"""engine/embedding/models.py: resolution, safe weight loading, preprocessing, encoders, offline messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fixtures_tiny import build_model, tiny_model_config, write_local_dir
from iimm.errors import InputError
from iimm.engine.embedding.models import (
    MODEL_ALIASES, class_text_embeddings, encode_images, encode_texts, file_fingerprint,
    load_model, resolve_model,
)
from iimm.engine.embedding.model_catalog import list_model_entries


class Secret:
    """A class torch.load(weights_only=True) must refuse to rebuild."""

    def __init__(self):
        self.payload = "runs code on load"


def _register(name: str, cfg: dict) -> str:
    from open_clip.factory import _MODEL_CONFIGS
    _MODEL_CONFIGS[name] = cfg
    return name


def _open_clip_reference(path):
    """The same local-dir model built and loaded by open_clip itself, with its own transform and tokenizer."""
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{path}")
    return model.eval(), preprocess, open_clip.get_tokenizer(f"local-dir:{path}")


def test_aliases_are_real_open_clip_pairs():
    pairs = {tuple(p) for p in open_clip.list_pretrained()}
    assert set(MODEL_ALIASES) == {"clip", "siglip", "coca", "eva02"}
    for arch, tag in MODEL_ALIASES.values():
        assert (arch, tag) in pairs


@pytest.mark.parametrize("family", ["clip", "siglip", "coca"])
def test_local_dir_matches_open_clip(tiny_model_dir_factory, family):
    path = tiny_model_dir_factory(family)
    lm = load_model(f"local-dir:{path}")
    ref, ref_pre, ref_tok = _open_clip_reference(path)
    size = tuple(lm.spec.preprocess_cfg["size"])
    assert tuple(open_clip.get_model_preprocess_cfg(lm.model)["size"]) == size
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (45, 37, 3), dtype=np.uint8))
    x = lm.preprocess(img)[None]
    assert torch.equal(x, ref_pre(img)[None])
    with torch.no_grad():
        want_img = ref.encode_image(x, normalize=False)
        want_txt = ref.encode_text(ref_tok(["a photo of a cat.", "dog"]), normalize=False)
    torch.testing.assert_close(encode_images(lm, x), want_img, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(encode_texts(lm, ["a photo of a cat.", "dog"]), want_txt, rtol=1e-5, atol=1e-6)
    assert lm.logit_scale == pytest.approx(float(ref.logit_scale.detach().exp()))
    if family == "siglip":
        assert lm.logit_bias == pytest.approx(-10.0)
    else:
        assert lm.logit_bias is None


def test_eva_family_builds_offline(tiny_model_dir_factory):
    lm = load_model(f"local-dir:{tiny_model_dir_factory('eva')}")
    out = encode_images(lm, torch.zeros(1, 3, 224, 224))
    assert out.shape == (1, 32) and torch.isfinite(out).all()


def test_class_text_embeddings_is_the_prompt_ensemble(tiny_model_dir):
    lm = load_model(f"local-dir:{tiny_model_dir}")
    ref, _, tok = _open_clip_reference(tiny_model_dir)
    classes, templates = ["cat", "sea lion", "x"], ["a photo of a {}.", "{} {braces}", "art of the {}"]
    got = class_text_embeddings(lm, classes, templates).double()
    want = []
    for c in classes:
        vecs = []
        for t in templates:
            with torch.no_grad():
                v = ref.encode_text(tok([t.replace("{}", c)])).double()[0]
            vecs.append(v / v.norm())
        m = torch.stack(vecs).mean(0)
        want.append(m / m.norm())
    torch.testing.assert_close(got, torch.stack(want), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.norm(dim=1), torch.ones(3, dtype=torch.float64))


def test_a_relative_local_dir_records_its_weights_by_absolute_path(tiny_model_dir, monkeypatch):
    monkeypatch.chdir(Path(tiny_model_dir).parent)
    spec = resolve_model(f"local-dir:{Path(tiny_model_dir).name}")
    assert spec.pretrained == str(Path(tiny_model_dir).absolute() / "open_clip_model.safetensors")
    assert spec.name == f"local-dir:{Path(tiny_model_dir).name}"  # the name as given


def test_fingerprint_tracks_weights_not_path(tmp_path, tiny_model_dir):
    a = resolve_model(f"local-dir:{tiny_model_dir}")
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in Path(tiny_model_dir).iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    assert resolve_model(f"local-dir:{copy}").fingerprint == a.fingerprint
    other = write_local_dir(tmp_path / "other", tiny_model_config("clip"), seed=1)
    assert resolve_model(f"local-dir:{other}").fingerprint != a.fingerprint
    memo = {}
    digest = file_fingerprint(copy / "open_clip_model.safetensors", memo)
    assert list(memo.values()) == [digest]


def test_weights_are_hashed_only_where_the_store_needs_the_fingerprint(tmp_path, tiny_model_dir, digits_png_dir,
                                                                         monkeypatch):
    import iimm.engine.embedding.models as models_mod
    from iimm.engine.embedding.extract import embed_dataset

    hashed = []
    real = models_mod.file_fingerprint
    monkeypatch.setattr(models_mod, "file_fingerprint", lambda path, memo=None: hashed.append(path) or real(path, memo))
    model = f"local-dir:{tiny_model_dir}"
    es, _ = embed_dataset(model, str(digits_png_dir), workers=0, use_cache=False)
    assert hashed == [] and es.meta["model_fingerprint"] is None  # --no-cache: never read the weights twice
    es, _ = embed_dataset(model, str(digits_png_dir), workers=0, store=tmp_path / "store")
    assert len(hashed) == 1 and es.meta["model_fingerprint"] == resolve_model(model).fingerprint


def test_random_init_is_seeded_and_fingerprinted():
    name = _register("iimm-test-arch-random", tiny_model_config("clip"))
    a, b = load_model(name), load_model(name, pretrained="random")
    assert a.pretrained == b.pretrained == "random" and a.fingerprint == b.fingerprint  # recorded, never null
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k


def test_pretrained_file_for_architecture_and_plain_state_dict_pt(tmp_path, tiny_model_dir):
    name = _register("iimm-test-arch-file", tiny_model_config("clip"))
    model = build_model(tiny_model_config("clip"), seed=3)
    pt = tmp_path / "weights.pt"
    torch.save(model.state_dict(), pt)
    lm = load_model(name, pretrained=str(pt))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(encode_images(lm, x), model.encode_image(x))
    assert lm.pretrained == str(pt)


def test_pickled_checkpoint_is_refused(tmp_path):
    name = _register("iimm-test-arch-pickle", tiny_model_config("clip"))
    model = build_model(tiny_model_config("clip"))
    bad = tmp_path / "evil.pt"
    torch.save({"state_dict": model.state_dict(), "extra": Secret()}, bad)
    with pytest.raises(InputError, match="arbitrary unpickling") as err:
        load_model(name, pretrained=str(bad))
    assert "\n" not in str(err.value) and "safetensors" in str(err.value)
    folder = tmp_path / "dir"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": tiny_model_config("clip")}))
    (folder / "open_clip_pytorch_model.bin").write_bytes(bad.read_bytes())
    with pytest.raises(InputError, match="arbitrary unpickling"):
        load_model(f"local-dir:{folder}")


def test_no_unrestricted_unpickling_fallback(tmp_path, monkeypatch):
    """open_clip retries torch.load without weights_only on TypeError; iimm must not."""
    name = _register("iimm-test-arch-typeerror", tiny_model_config("clip"))
    pt = tmp_path / "w.pt"
    torch.save(build_model(tiny_model_config("clip")).state_dict(), pt)
    calls = []

    def fake_load(path, *args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        raise TypeError("crafted pickle trips the weights-only unpickler")

    monkeypatch.setattr(torch, "load", fake_load)
    with pytest.raises(InputError, match="cannot read weights .* safely"):
        load_model(name, pretrained=str(pt))
    assert calls == [True]


def test_mismatched_weights_and_bad_names(tmp_path, tiny_model_dir):
    name = _register("iimm-test-arch-mismatch", tiny_model_config("coca"))
    with pytest.raises(InputError, match="do not fit"):
        load_model(name, pretrained=str(Path(tiny_model_dir) / "open_clip_model.safetensors"))
    with pytest.raises(InputError, match="unknown model 'no-such-net'"):
        resolve_model("no-such-net")
    with pytest.raises(InputError, match="tags: openai"):
        resolve_model("ViT-B-32", pretrained="not-a-tag")
    with pytest.raises(InputError, match="open_clip_config.json"):
        resolve_model(f"local-dir:{tmp_path}")
    with pytest.raises(InputError, match="not found"):
        resolve_model(f"local-dir:{tmp_path / 'missing'}")


def test_offline_message_and_cache_detection(tmp_path, digits_png_dir):
    """Run in a fresh interpreter: huggingface_hub reads HF_HUB_OFFLINE / HF_HOME at import."""
    hub = tmp_path / "hf" / "hub"
    snap = hub / "models--timm--vit_base_patch16_clip_224.openai" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "open_clip_model.safetensors").write_bytes(b"not really weights")
    (hub / "models--timm--vit_base_patch16_clip_224.openai" / "refs").mkdir()
    (hub / "models--timm--vit_base_patch16_clip_224.openai" / "refs" / "main").write_text("abc123")
    script = textwrap.dedent("""
        import json
        from iimm.engine.embedding.models import resolve_model, ModelUnavailable
        from iimm.engine.embedding.model_catalog import is_cached
        out = {"cached_b16": is_cached("ViT-B-16", "openai"), "cached_b32": is_cached("ViT-B-32", "openai")}
        try:
            resolve_model("clip")
        except ModelUnavailable as e:
            out["error"] = str(e)
        out["b16_checkpoint"] = resolve_model("ViT-B-16", "openai").checkpoint
        import contextlib, io, sys
        from iimm.cli.main import main
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                main(["score", "--model", "siglip", "--data", sys.argv[1], "--no-progress"])
            except SystemExit as e:
                out["cli_exit"] = e.code
        out["cli_stderr"] = err.getvalue()
        print(json.dumps(out))
    """)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), HOME=str(tmp_path),
               IIMM_HOME=str(tmp_path / "store"))
    env.pop("HF_HUB_CACHE", None)
    res = subprocess.run([sys.executable, "-c", script, str(digits_png_dir)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["cached_b16"] is True and out["cached_b32"] is False
    msg = out["error"]
    assert "\n" not in msg and "'clip'" in msg and "could not be downloaded" in msg
    assert "--pretrained FILE" in msg and "local-dir:" in msg and "Hugging Face cache" in msg
    assert out["b16_checkpoint"].endswith("snapshots/abc123/open_clip_model.safetensors")
    # the same failure through the command line: exit status 2 and one line on stderr
    lines = out["cli_stderr"].strip().splitlines()
    assert out["cli_exit"] == 2 and len(lines) == 1, out["cli_stderr"]
    assert lines[0].startswith("iimm: error: model 'siglip'") and "HF_HUB_OFFLINE is set" in lines[0]


def test_list_model_entries_aliases_first():
    rows = list_model_entries()
    assert [r.alias for r in rows[:4]] == list(MODEL_ALIASES)
    assert len([r for r in rows if r.pretrained]) == len(open_clip.list_pretrained())  # + untagged architectures
    assert {r.architecture for r in list_model_entries("siglip")} >= {"ViT-B-16-SigLIP"}


def test_precision_and_device_validation(tiny_model_dir):
    lm = load_model(f"local-dir:{tiny_model_dir}", precision="bf16")
    out = encode_images(lm, torch.randn(2, 3, 32, 32))
    assert out.dtype == torch.float32 and out.shape == (2, 32)
    with pytest.raises(InputError, match="precision"):
        load_model(f"local-dir:{tiny_model_dir}", precision="int3")
    with pytest.raises(InputError, match="device"):
        load_model(f"local-dir:{tiny_model_dir}", device="warp-drive")
    assert F.normalize(out, dim=-1).isfinite().all()


def test_unresolvable_hub_fails_at_once_in_one_line(tmp_path, digits_png_dir, monkeypatch, capsys):
    """Without HF_HUB_OFFLINE, a machine whose DNS cannot resolve the Hub fails before any retry loop."""
    import socket

    from iimm.cli.main import main

    def no_dns(host, *args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for model in ("eva02", "hf-hub:someone/some-model"):
        with pytest.raises(SystemExit) as exit_info:
            main(["score", "--model", model, "--data", str(digits_png_dir), "--no-progress"])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1, err
        assert "could not be downloaded (no network: huggingface.co cannot be resolved)" in err
        assert "--pretrained FILE" in err and "local-dir:" in err


def test_aliases_keep_how_their_weights_were_trained(tmp_path):
    """openai weights need QuickGELU, which open_clip's plain ViT-B-32 config lacks; an alias given a weights
    file keeps its tag's preprocessing (SigLIP: mean 0.5, squash)."""
    import dataclasses

    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(b"only hashed here")
    clip = resolve_model("clip", str(weights))
    assert clip.model_cfg.get("quick_gelu") is True
    siglip = resolve_model("siglip", str(weights))
    assert tuple(siglip.preprocess_cfg["mean"]) == (0.5, 0.5, 0.5)
    assert siglip.preprocess_cfg["resize_mode"] == "squash"
    assert not siglip.model_cfg.get("quick_gelu")
    plain = resolve_model("ViT-B-32", str(weights))
    assert not plain.model_cfg.get("quick_gelu")
    lm = load_model("clip", spec=dataclasses.replace(clip, checkpoint=None))
    assert type(lm.model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
