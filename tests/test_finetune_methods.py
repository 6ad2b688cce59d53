"""Fine-tuning methods on tiny models of every family: which parameters train, and what the added modules compute.

Expected parameter sets are written from open_clip's and timm's own parameter names
(regular expressions below), never from the discovery code under test.
"""

from __future__ import annotations

import copy
import math
import re

import open_clip
import pytest
import torch
import torch.nn.functional as F

from fixtures_finetune import eva_config
from fixtures_tiny import build_model, tiny_model_config
from iimm.errors import InputError
from iimm.engine.finetune import METHODS, base_state_dict, learning_rate, trainable_parameters, tune_model
from iimm.engine.finetune.methods import MethodOptions, find_towers

# family -> (config, image-block name pattern, text-block name pattern)
FAMILIES = {
    "clip": (lambda: tiny_model_config("clip"), r"visual\.transformer\.resblocks\.\d+\.", r"transformer\.resblocks\.\d+\."),
    "siglip": (lambda: tiny_model_config("siglip"), r"visual\.trunk\.blocks\.\d+\.", r"text\.transformer\.resblocks\.\d+\."),
    "coca": (lambda: tiny_model_config("coca"), r"visual\.transformer\.resblocks\.\d+\.", r"text\.transformer\.resblocks\.\d+\."),
    "eva02-clip": (lambda: eva_config(fused=False), r"visual\.trunk\.blocks\.\d+\.", r"text\.transformer\.resblocks\.\d+\."),
    "eva02-fused": (lambda: eva_config(fused=True), r"visual\.trunk\.blocks\.\d+\.", r"text\.transformer\.resblocks\.\d+\."),
}
QKV_WEIGHT = r"attn\.(in_proj_weight|qkv\.weight|[qkv]_proj\.weight)$"
QV_WEIGHT = r"attn\.(in_proj_weight|qkv\.weight|[qv]_proj\.weight)$"
_BASE: dict[str, torch.nn.Module] = {}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fresh(family: str) -> torch.nn.Module:
    """A new copy of the family's tiny model (built once per session)."""
    if family not in _BASE:
        _BASE[family] = build_model(FAMILIES[family][0]())
    return copy.deepcopy(_BASE[family])


def in_blocks(name: str, family: str) -> bool:
    _, image, text = FAMILIES[family]
    return bool(re.match(image, name) or re.match(text, name))


def expected_names(model: torch.nn.Module, family: str, method: str) -> set[str]:
    names = [n for n, _ in model.named_parameters()]
    if method == "full":
        return {n for n in names if n not in ("logit_scale", "logit_bias") and not n.startswith("text_decoder.")}
    if method == "bitfit":
        return {n for n in names if in_blocks(n, family) and re.search(r"(\.|_)bias$", n)}
    if method == "attention":
        return {n for n in names if in_blocks(n, family) and re.search(QKV_WEIGHT, n)}
    raise AssertionError(method)


def tokens_for(model: torch.nn.Module, n: int = 4) -> torch.Tensor:
    length = getattr(getattr(model, "text", None), "context_length", None) or model.context_length
    return open_clip.tokenize([f"a photo of a thing number {i}" for i in range(n)], context_length=length)


def images_for(family: str, b: int = 2, seed: int = 0) -> torch.Tensor:
    size = FAMILIES[family][0]()["vision_cfg"]["image_size"]
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("method", ["full", "bitfit", "attention"])
def test_in_place_methods_train_exactly_the_named_parameters(family, method):
    model = fresh(family)
    expected = expected_names(model, family, method)
    got = trainable_parameters(model, method)
    assert set(got) == expected and expected
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.named_parameters()} - expected
    assert "logit_scale" in frozen
    assert not any(n.startswith("text_decoder.") for n in got)


def test_bitfit_includes_eva_separate_q_and_v_biases():
    got = trainable_parameters(fresh("eva02-fused"), "bitfit")
    assert {"visual.trunk.blocks.0.attn.q_bias", "visual.trunk.blocks.1.attn.v_bias"} <= set(got)
    assert "visual.trunk.patch_embed.proj.bias" not in got  # a bias outside the blocks


@pytest.mark.parametrize("family", list(FAMILIES))
def test_lora_adapts_q_and_v_of_every_block_of_both_towers(family):
    model = fresh(family)
    targets = {n for n, _ in model.named_parameters() if in_blocks(n, family) and re.search(QV_WEIGHT, n)}
    shapes = {n: p.shape for n, p in model.named_parameters()}
    r = 3
    got = trainable_parameters(model, "lora", rank=r, alpha=6.0)
    assert all("lora_" in n for n in got)
    owners: dict[str, list[str]] = {}
    for n in got:
        owner, rest = n.split(".parametrizations.")
        weight, _, leaf = rest.split(".")
        owners.setdefault(f"{owner}.{weight}", []).append(leaf)
    assert set(owners) == targets
    expected_count = 0
    for owner, leaves in owners.items():
        out, inp = shapes[owner]
        if re.search(r"(in_proj_weight|qkv\.weight)$", owner):  # fused [q; k; v]: q and v row blocks
            assert sorted(leaves) == ["lora_A_q", "lora_A_v", "lora_B_q", "lora_B_v"]
            expected_count += 2 * (r * inp + (out // 3) * r)
        else:  # a separate q_proj / v_proj (EVA-02-CLIP)
            assert sorted(leaves) == ["lora_A", "lora_B"]
            expected_count += r * inp + out * r
    assert sum(p.numel() for p in got.values()) == expected_count


def test_lora_mlp_adds_every_mlp_linear():
    model = fresh("eva02-clip")
    mlp = {n[: -len(".weight")] for n, m in model.named_parameters()
           if re.match(r"visual\.trunk\.blocks\.\d+\.mlp\..*\.weight$", n) and m.dim() == 2}
    got = trainable_parameters(model, "lora", rank=2, lora_mlp=True)
    owners = {n.split(".parametrizations.")[0] for n in got}
    assert mlp and mlp <= owners


@pytest.mark.parametrize("style,scale", [("peft", 5.0 / 2), ("paper", 0.2)])  # α/r with r=2, α=5; the fixed 0.2
@pytest.mark.parametrize("family", ["clip", "siglip", "eva02-clip", "eva02-fused"])
def test_lora_equals_the_merged_weight_and_never_writes_the_base(family, style, scale):
    model = fresh(family)
    reference = copy.deepcopy(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r, alpha = 2, 5.0
    tuned = tune_model(model, "lora", MethodOptions(rank=r, alpha=alpha, lora_style=style))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in tuned.named_trainable().items():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    # naive LoRA: merge (α/r)·B A into a copy of the weights, in place
    params = dict(tuned.named_trainable())
    ref_params = dict(reference.named_parameters())
    with torch.no_grad():
        for n in params:
            if not n.endswith(("lora_A", "lora_A_q", "lora_A_v")):
                continue
            owner, rest = n.split(".parametrizations.")
            weight, _, leaf = rest.split(".")
            role = leaf[len("lora_A"):]
            a, b = params[n], params[n.replace("lora_A", "lora_B")]
            w = ref_params[f"{owner}.{weight}"]
            third = w.shape[0] // 3
            rows = {"": slice(0, w.shape[0]), "_q": slice(0, third), "_v": slice(2 * third, 3 * third)}[role]
            w[rows] += scale * (b @ a)
    x, t = images_for(family), tokens_for(reference)
    tuned.eval(), reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(tuned.model.encode_image(x), reference.encode_image(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(tuned.model.encode_text(t), reference.encode_text(t), rtol=1e-4, atol=1e-5)
    after = base_state_dict(tuned.model)
    assert set(after) == set(before)
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_fused_lora_leaves_the_key_rows_untouched():
    model = fresh("clip")
    base = model.visual.transformer.resblocks[0].attn.in_proj_weight.detach().clone()
    tune_model(model, "lora", MethodOptions(rank=2))
    attn = model.visual.transformer.resblocks[0].attn
    delta = attn.parametrizations.in_proj_weight[0]
    with torch.no_grad():
        delta.lora_B_q.fill_(0.3)
        delta.lora_B_v.fill_(-0.2)
    effective = attn.in_proj_weight
    d = base.shape[1]
    assert torch.equal(effective[d:2 * d], base[d:2 * d])
    assert not torch.equal(effective[:d], base[:d]) and not torch.equal(effective[2 * d:], base[2 * d:])


@pytest.mark.parametrize("family,method", [("clip", "lora"), ("clip", "adapter"), ("siglip", "lora"),
                                           ("eva02-clip", "lora"), ("coca", "adapter")])
def test_training_steps_change_only_the_added_parameters(family, method):
    model = fresh(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tuned = tune_model(model, method, MethodOptions(rank=2))
    params = tuned.named_trainable()
    start = {n: p.detach().clone() for n, p in params.items()}
    opt = torch.optim.SGD(params.values(), lr=0.5, momentum=0.9, weight_decay=0.1)
    x, t, y = images_for(family, 4), tokens_for(model, 4), torch.tensor([0, 1, 2, 3])
    tuned.train()
    for _ in range(3):
        logits = tuned.logits(tuned.encode_image(x), tuned.class_embeddings(t, 4))
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert any(not torch.equal(p, start[n]) for n, p in params.items())
    after = base_state_dict(tuned.model)
    assert all(torch.equal(after[k], before[k]) for k in before)


# every family × method, except bitfit/probe on the two slowest towers (the same code paths run on the others)
GRADIENT_CASES = [(f, m) for f in FAMILIES for m in METHODS if not (f in ("siglip", "coca") and m in ("bitfit", "probe"))]


@pytest.mark.parametrize("family,method", GRADIENT_CASES)
def test_gradients_reach_only_trainable_parameters(family, method):
    model = fresh(family)
    tuned = tune_model(model, method, MethodOptions(rank=2), num_classes=4)
    x, t, y = images_for(family, 2), tokens_for(model, 4), torch.tensor([0, 3])
    tuned.train()
    feats = tuned.encode_image(x)
    logits = tuned.logits(feats, None if method == "probe" else tuned.class_embeddings(t, 4))
    F.cross_entropy(logits, y).backward()
    trainable = tuned.named_trainable()
    with_grad = {n for n, p in trainable.items() if p.grad is not None and p.grad.abs().sum() > 0}
    frozen_with_grad = [n for n, p in tuned.named_parameters() if not p.requires_grad and p.grad is not None]
    assert not frozen_with_grad
    if method == "lora":
        # B starts at zero, so only B receives a gradient on the first step (A's is B^T · …)
        assert with_grad == {n for n in trainable if ".lora_B" in n}
    else:
        assert with_grad == set(trainable)


def test_attention_train_blocks_takes_the_first_k_blocks_of_each_tower():
    model = fresh("siglip")
    got = trainable_parameters(model, "attention", train_blocks=2)
    assert set(got) == {"visual.trunk.blocks.0.attn.qkv.weight", "visual.trunk.blocks.1.attn.qkv.weight",
                        "text.transformer.resblocks.0.attn.in_proj_weight",
                        "text.transformer.resblocks.1.attn.in_proj_weight"}
    deepest = max(len(t.blocks) for t in find_towers(model))
    with pytest.raises(InputError, match=f"--train-blocks {deepest + 1}, but the model's towers have .* pass at most "
                                         f"{deepest}"):
        trainable_parameters(fresh("siglip"), "attention", train_blocks=deepest + 1)


@pytest.mark.parametrize("embed_dim,reduction", [(48, 5), (32, 4), (7, 16)])
def test_adapter_mixes_residually_at_any_width(embed_dim, reduction):
    cfg = tiny_model_config("clip")
    cfg["embed_dim"] = embed_dim
    model = build_model(cfg)
    reference = copy.deepcopy(model).eval()
    tuned = tune_model(model, "adapter", MethodOptions(reduction=reduction)).eval()
    hidden = max(1, embed_dim // reduction)
    got = tuned.named_trainable()
    assert {n: tuple(p.shape) for n, p in got.items()} == {
        "image_adapter.0.weight": (hidden, embed_dim), "image_adapter.2.weight": (embed_dim, hidden),
        "text_adapter.0.weight": (hidden, embed_dim), "text_adapter.2.weight": (embed_dim, hidden)}
    x, t = images_for("clip"), tokens_for(reference)
    with torch.no_grad():
        for side, raw in (("image", reference.encode_image(x)), ("text", reference.encode_text(t))):
            w1, w2 = got[f"{side}_adapter.0.weight"].double(), got[f"{side}_adapter.2.weight"].double()
            f = raw.double()
            adapted = torch.relu(torch.relu(f @ w1.T) @ w2.T)
            mixed = 0.2 * adapted + 0.8 * f
            expected = mixed / mixed.norm(dim=-1, keepdim=True)
            out = tuned.encode_image(x) if side == "image" else tuned.encode_text(t)
            torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_probe_starts_at_the_zero_shot_classifier(family):
    model = fresh(family)
    reference = copy.deepcopy(model).eval()
    t = tokens_for(reference, 5)
    with torch.no_grad():
        text = F.normalize(reference.encode_text(t).double(), dim=-1)
        image = F.normalize(reference.encode_image(images_for(family, 3)).double(), dim=-1)
        scale = reference.logit_scale.exp().double()
        bias = reference.logit_bias.double() if getattr(reference, "logit_bias", None) is not None else 0.0
        zero_shot = scale * image @ text.T + bias
    tuned = tune_model(model, "probe", class_embeddings=text.float()).eval()
    assert set(tuned.named_trainable()) == {"probe.weight", "probe.bias"}
    with torch.no_grad():
        probe = tuned.logits(tuned.encode_image(images_for(family, 3)), None)
    torch.testing.assert_close(probe.double(), zero_shot, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("family,method", [("clip", "lora"), ("siglip", "lora"), ("clip", "probe")])
def test_logits_stay_float32_under_bf16_autocast(family, method):
    """bf16 logits of 100·cos step by 0.25 and would tie or swap close classes; they are computed in fp32."""
    model = fresh(family)
    with torch.no_grad():
        d = model.encode_image(images_for(family, 1)).shape[1]
    text = F.normalize(torch.randn(5, d), dim=-1)
    tuned = tune_model(model, method, class_embeddings=text).eval()
    feats = F.normalize(torch.randn(4, text.shape[1]), dim=-1).bfloat16()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = tuned.logits(feats, text.bfloat16())
    assert out.dtype == torch.float32
    with torch.no_grad():
        want = tuned.logits(feats.float(), text.bfloat16().float())
    torch.testing.assert_close(out, want)


def test_shared_eva02_tiny_fixture_has_its_blocks_found(tiny_model_dir_factory):
    """timm's real eva02_tiny (224 px, 12 blocks): fused qkv weight with separate q/v biases."""
    from iimm.engine.embedding.models import load_model

    lm = load_model(f"local-dir:{tiny_model_dir_factory('eva')}")
    got = trainable_parameters(lm.model, "attention")
    assert sum(n.startswith("visual.trunk.blocks.") for n in got) == 12
    assert sum(n.startswith("text.transformer.resblocks.") for n in got) == 2


def test_bad_method_and_options_are_one_line_input_errors():
    with pytest.raises(InputError, match="unknown fine-tuning method"):
        trainable_parameters(fresh("clip"), "prompt-tuning")
    with pytest.raises(InputError, match="--rank"):
        trainable_parameters(fresh("clip"), "lora", rank=0)
    with pytest.raises(InputError, match="--train-blocks"):
        trainable_parameters(fresh("clip"), "attention", train_blocks=0)


def test_learning_rate_schedule_matches_its_definition():
    base, total, warm = 0.1, 12, 3
    got = [learning_rate(s, total, base, "cosine", warm) for s in range(total)]
    naive = [base * (s + 1) / warm if s < warm else base * 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm)))
             for s in range(total)]
    assert got == pytest.approx(naive, rel=1e-12)
    assert got[warm] == pytest.approx(base) and got[-1] < got[-2] < got[warm]
    assert [learning_rate(s, total, base, "constant", 2) for s in range(4)] == pytest.approx([0.05, 0.1, 0.1, 0.1])
    assert learning_rate(0, 1, base, "cosine", 0) == pytest.approx(base)


# ---- the two readings of each method ---------------------------------------------------------------

def test_the_papers_readings_are_the_defaults_and_name_the_run():
    default = MethodOptions()
    assert (default.lora_style, default.bitfit_scope, default.adapter_towers) == ("paper", "blocks", "both")
    assert default.relevant("lora") == {"rank": 8, "lora_mlp": False, "lora_style": "paper"}  # α unused
    assert MethodOptions(lora_style="peft").relevant("lora")["alpha"] == 16.0
    assert default.relevant("bitfit") == {"bitfit_scope": "blocks"}
    assert MethodOptions(adapter_towers="image").relevant("adapter") == {"reduction": 4, "adapter_towers": "image"}
    with pytest.raises(InputError, match="--lora-style"):
        trainable_parameters(fresh("clip"), "lora", lora_style="qlora")


def test_paper_style_lora_draws_a_from_a_normal_of_std_0_02_and_scales_by_0_2():
    from iimm.engine.finetune.lora import LowRankDelta

    torch.manual_seed(0)
    delta = LowRankDelta(torch.zeros(300, 400), [("", 0, 300)], rank=16, alpha=64.0, style="paper")
    a = delta.lora_A.detach().double()
    assert delta.scale == 0.2 and abs(a.mean()) < 1e-3 and abs(a.std() - 0.02) < 0.001
    assert torch.count_nonzero(delta.lora_B) == 0
    peft = LowRankDelta(torch.zeros(300, 400), [("", 0, 300)], rank=16, alpha=64.0, style="peft")
    bound = 1 / math.sqrt(400)  # Kaiming-uniform with a = √5: U(−1/√in, 1/√in)
    assert peft.scale == 4.0 and float(peft.lora_A.detach().abs().max()) <= bound


@pytest.mark.parametrize("family", list(FAMILIES))
def test_bitfit_scope_all_trains_every_bias_of_the_towers(family):
    model = fresh(family)
    names = [n for n, _ in model.named_parameters()]
    expected = {n for n in names if re.search(r"(\.|_)bias$", n) and n != "logit_bias"
                and not n.startswith("text_decoder.")}
    got = set(trainable_parameters(model, "bitfit", bitfit_scope="all"))
    assert got == expected
    assert got > expected_names(fresh(family), family, "bitfit")  # more than the blocks' biases


def test_bitfit_scope_all_includes_the_layer_norms_outside_the_blocks():
    got = trainable_parameters(fresh("clip"), "bitfit", bitfit_scope="all")
    assert {"visual.ln_pre.bias", "visual.ln_post.bias", "ln_final.bias"} <= set(got)
    assert not {"visual.ln_pre.bias", "ln_final.bias"} & set(trainable_parameters(fresh("clip"), "bitfit"))


def test_image_only_adapter_leaves_the_text_embeddings_as_the_model_makes_them():
    model = fresh("clip")
    reference = copy.deepcopy(model).eval()
    tuned = tune_model(model, "adapter", MethodOptions(adapter_towers="image")).eval()
    assert set(tuned.named_trainable()) == {"image_adapter.0.weight", "image_adapter.2.weight"}
    t = tokens_for(reference)
    with torch.no_grad():
        expected = F.normalize(reference.encode_text(t).double(), dim=-1)
        torch.testing.assert_close(tuned.encode_text(t).double(), expected, rtol=1e-6, atol=1e-7)


# ---- the text tower in chunks ---------------------------------------------------------------------

@pytest.mark.parametrize("method", ["full", "lora"])
def test_text_tower_encodes_in_chunks_with_the_same_values_and_gradients(method, monkeypatch):
    import iimm.engine.finetune.methods as methods_mod

    t = tokens_for(fresh("clip"), n=10)
    results = []
    for chunk in (10 ** 6, 3):  # one pass over every prompt, then chunks of 3 (4 chunks for 10 prompts)
        monkeypatch.setattr(methods_mod, "TEXT_CHUNK", chunk)
        torch.manual_seed(0)
        tuned = tune_model(fresh("clip"), method, MethodOptions(rank=2)).train()
        calls = []
        real = tuned.model.encode_text
        monkeypatch.setattr(tuned.model, "encode_text", lambda x, **kw: calls.append(len(x)) or real(x, **kw))
        cls = tuned.class_embeddings(t, 5)  # 5 classes × 2 prompts
        (cls * torch.randn(cls.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
        grads = {n: p.grad.clone() for n, p in tuned.named_trainable().items() if p.grad is not None}
        results.append((cls.detach(), grads, calls))
        with torch.no_grad():
            calls.clear()
            torch.testing.assert_close(tuned.class_embeddings(t, 5), cls.detach(), rtol=1e-5, atol=1e-6)
            assert calls == ([10] if chunk > 10 else [3, 3, 3, 1])
    (whole, g_whole, c_whole), (chunked, g_chunked, c_chunked) = results
    assert c_whole == [10] and c_chunked[:4] == [3, 3, 3, 1]  # then each chunk again in the backward pass
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    assert set(g_whole) == set(g_chunked) and any(n.startswith("transformer.") for n in g_whole)
    for n in g_whole:
        scale = float(g_whole[n].abs().max())  # float32 sums in another order: relative to the gradient's size
        torch.testing.assert_close(g_chunked[n], g_whole[n], rtol=1e-4, atol=1e-5 * max(scale, 1e-3))
