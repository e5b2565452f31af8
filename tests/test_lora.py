"""LoRA (minidiff.models.lora): a frozen layer plus a trainable low-rank change that starts at zero."""
import copy

import pytest
import torch
from torch import nn

from minidiff.models.lora import (
    LoRALayer,
    add_lora,
    load_lora,
    lora_layers,
    lora_state_dict,
    merge_lora,
    set_lora_scale,
)
from test_text2image import encoder, unet  # noqa: F401  (the tiny text-to-image U-Net and its prompt encoder)


@pytest.fixture(autouse=True)
def _tiny_models(one_thread):
    """Tiny models run fastest on one thread (``conftest.one_thread``)."""


def _inputs(unet, encoder):  # noqa: F811
    torch.manual_seed(2)
    x = torch.randn(3, *unet.sample_shape)
    return x, torch.tensor([10, 500, 900]), encoder(["a red circle", "a small green square, top left", ""])


def _adapted(unet, rank=2):  # noqa: F811
    model = add_lora(copy.deepcopy(unet), rank)
    with torch.no_grad():  # as after training: B no longer zero
        for layer in lora_layers(model).values():
            layer.B.normal_(0, 0.05)
    return model


def test_a_fresh_adapter_is_exactly_the_base_and_only_a_and_b_train(unet, encoder):  # noqa: F811
    x, t, cond = _inputs(unet, encoder)
    model = add_lora(copy.deepcopy(unet), 4)
    assert torch.equal(model(x, t, cond), unet(x, t, cond))
    layers = lora_layers(model)
    assert layers and all(name.rsplit(".", 1)[1] in ("q", "k", "v", "out") for name in layers)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{name}.{part}" for name in layers for part in ("A", "B")}
    expected = sum(4 * (layer.base.in_features + layer.base.out_features) for layer in layers.values())
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected


def test_the_first_gradient_reaches_b_but_not_a():
    """∂y/∂B = s(α/r)·(Ax)ᵀ ≠ 0, while A's gradient goes through B = 0."""
    torch.manual_seed(0)
    layer = LoRALayer(nn.Linear(6, 5), rank=2)
    layer(torch.randn(4, 6)).pow(2).sum().backward()
    assert layer.B.grad.abs().sum() > 0 and torch.equal(layer.A.grad, torch.zeros_like(layer.A))


def test_the_lora_scale_dials_the_change_and_merging_computes_the_same(unet, encoder):  # noqa: F811
    x, t, cond = _inputs(unet, encoder)
    model = _adapted(unet)
    adapted = model(x, t, cond)
    assert not torch.allclose(adapted, unet(x, t, cond))
    assert torch.equal(set_lora_scale(model, 0.0)(x, t, cond), unet(x, t, cond))
    half = set_lora_scale(model, 0.5)(x, t, cond)
    merged = merge_lora(model)
    assert not lora_layers(merged)
    assert torch.allclose(merged(x, t, cond), half, atol=1e-5)


def test_an_adapter_saved_and_loaded_on_a_fresh_base_gives_the_same_model(unet, encoder):  # noqa: F811
    x, t, cond = _inputs(unet, encoder)
    model = _adapted(unet, rank=3)
    state = lora_state_dict(model)
    assert all(v.shape[0] == 3 for k, v in state.items() if k.endswith(".A"))
    again = load_lora(copy.deepcopy(unet), state)
    assert torch.equal(again(x, t, cond), model(x, t, cond))
    with pytest.raises(ValueError, match="other layers"):  # an A without its B
        load_lora(copy.deepcopy(unet), {k: v for k, v in list(state.items())[1:]})
    with pytest.raises(ValueError, match="other layers"):  # a layer this U-Net does not have
        load_lora(copy.deepcopy(unet), {"nowhere.q.A": state[next(iter(state))], "nowhere.q.B": torch.zeros(8, 3)})


def test_cross_attention_adapters_are_about_half_and_load_back_as_they_were(unet, encoder):  # noqa: F811
    x, t, cond = _inputs(unet, encoder)
    every = sum(p.numel() for p in _adapted(unet, rank=4).parameters() if p.requires_grad)
    model = add_lora(copy.deepcopy(unet), 4, where="cross")
    assert all(".attn2." in name for name in lora_layers(model)) and len(lora_layers(model)) > 0
    cross = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0.4 * every < cross < 0.6 * every
    for layer in lora_layers(model).values():
        torch.nn.init.normal_(layer.B)
    again = load_lora(copy.deepcopy(unet), lora_state_dict(model))
    assert set(lora_layers(again)) == set(lora_layers(model)) and torch.equal(again(x, t, cond), model(x, t, cond))
    with pytest.raises(ValueError, match="all or cross"):
        add_lora(copy.deepcopy(unet), 4, where="self")


def test_a_rank_one_adapter_learns_a_rank_one_change_exactly():
    """The target W + u vᵀ is within reach of rank 1: training drives the error to ~0 (and rank is what limits it)."""
    torch.manual_seed(0)
    base = nn.Linear(8, 8)
    target = base.weight.detach() + torch.outer(torch.randn(8), torch.randn(8))
    layer = LoRALayer(base, rank=1)
    optimizer = torch.optim.Adam([layer.A, layer.B], lr=0.05)
    x = torch.randn(256, 8)
    want = x @ target.T + base.bias.detach()
    for _ in range(1500):
        optimizer.zero_grad()
        loss = (layer(x) - want).pow(2).mean()
        loss.backward()
        optimizer.step()
    assert loss.item() < 1e-4
    assert torch.allclose(layer.merged().weight, target, atol=1e-2)


@pytest.mark.parametrize("rank", [0, 9, 2.5])
def test_a_rank_out_of_range_is_one_clear_error(rank):
    with pytest.raises(ValueError, match="rank must be an integer from 1 to 8"):
        LoRALayer(nn.Linear(8, 16), rank)


def test_a_model_without_attention_cannot_be_adapted():
    with pytest.raises(ValueError, match="needs attention layers"):
        add_lora(nn.Sequential(nn.Linear(4, 4)), 2)


def test_a_convolution_adapter_starts_as_the_base_merges_exactly_and_counts_r_times_in_k2_plus_out(unet, encoder):  # noqa: F811
    conv = nn.Conv2d(6, 10, 3, padding=1)
    layer = LoRALayer(conv, rank=2)
    x = torch.randn(3, 6, 8, 8)
    assert torch.equal(layer(x), conv(x)) and layer.A.numel() + layer.B.numel() == 2 * (6 * 9 + 10)
    torch.nn.init.normal_(layer.B)
    assert torch.allclose(layer.merged()(x), layer(x), atol=1e-5)
    reference = nn.functional.conv2d(x, conv.weight + (layer.B @ layer.A).view(10, 6, 3, 3), conv.bias, padding=1)
    assert torch.allclose(layer(x), reference, atol=1e-5)
    x_t, t, cond = _inputs(unet, encoder)
    model = add_lora(copy.deepcopy(unet), 2, where="cross", convolutions=True)
    assert any(name.endswith("conv1") for name in lora_layers(model)) and torch.equal(model(x_t, t, cond), unet(x_t, t, cond))
    for adapter in lora_layers(model).values():
        torch.nn.init.normal_(adapter.B, std=0.01)
    again = load_lora(copy.deepcopy(unet), lora_state_dict(model))
    assert torch.equal(again(x_t, t, cond), model(x_t, t, cond))
    assert torch.allclose(merge_lora(model)(x_t, t, cond), again(x_t, t, cond), atol=1e-5) and not lora_layers(model)
