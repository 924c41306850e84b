"""Denoiser backbones: one signature, (B,) and (B, T) timesteps, gradients, learnability."""

import pytest
import torch

from robopolicy.nets import BACKBONES, ConditionalUnet1D, make_backbone

B, T, DA, DC = 3, 16, 7, 10
NAMES = sorted(BACKBONES)
# small configs keep the learning check fast; the default configs are covered by the others
SMALL = {
    "unet": {"down_dims": (32, 64), "diffusion_step_embed_dim": 32},
    "mlp": {"hidden_dim": 128, "n_layers": 2},
    "transformer": {"d_model": 64, "n_heads": 4, "n_layers": 2},
}


def inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, DA, generator=g)
    t = torch.rand(B, generator=g) * 1000  # (B,)
    cond = torch.randn(B, DC, generator=g)
    return x, t, cond


@pytest.fixture(params=NAMES)
def name(request):
    return request.param


@pytest.fixture
def model(name):
    torch.manual_seed(0)
    return make_backbone(name, DA, DC, T).eval()


@pytest.mark.parametrize("per_element", [False, True])
def test_output_shape(model, per_element):
    x, t, cond = inputs()
    if per_element:
        t = torch.rand(B, T) * 1000  # (B, T)
    assert model(x, t, cond).shape == (B, T, DA)


def test_equal_per_element_timesteps_match_per_sample(model):
    x, t, cond = inputs()
    with torch.no_grad():
        per_sample = model(x, t, cond)
        per_element = model(x, t[:, None].expand(B, T), cond)  # (B, T)
    torch.testing.assert_close(per_element, per_sample, atol=1e-5, rtol=0)


def test_output_depends_on_timestep_and_cond(model):
    x, t, cond = inputs()
    with torch.no_grad():
        base = model(x, t, cond)
        assert not torch.allclose(model(x, t + 100.0, cond), base, atol=1e-4)
        t_el = t[:, None].repeat(1, T)  # (B, T)
        t_el[:, : T // 2] += 300.0
        assert not torch.allclose(model(x, t_el, cond), base, atol=1e-4)
        assert not torch.allclose(model(x, t, cond + 1.0), base, atol=1e-4)


def test_integer_and_scalar_timesteps_are_accepted(model):
    x, _, cond = inputs()
    with torch.no_grad():
        ref = model(x, torch.full((B,), 5.0), cond)
        torch.testing.assert_close(model(x, torch.full((B,), 5), cond), ref)
        torch.testing.assert_close(model(x, torch.tensor(5.0), cond), ref)


def test_bad_timestep_shape_is_an_error(model):
    x, _, cond = inputs()
    with pytest.raises(ValueError, match="timestep must have shape"):
        model(x, torch.zeros(B, T + 1), cond)


@pytest.mark.parametrize("per_element", [False, True])
def test_every_parameter_gets_a_gradient(name, per_element):
    torch.manual_seed(0)
    model = make_backbone(name, DA, DC, T, **SMALL[name]).train()
    x, t, cond = inputs()
    if per_element:
        t = torch.rand(B, T) * 1000  # (B, T)
    model(x, t, cond).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"


def test_unet_default_size():
    n = sum(p.numel() for p in ConditionalUnet1D(DA, 64, T).parameters())
    assert n == 4_647_815, n


def test_unet_horizon_must_be_divisible():
    with pytest.raises(ValueError, match="divisible by 4"):
        ConditionalUnet1D(DA, DC, horizon=10)  # 3 levels -> multiples of 4
    model = ConditionalUnet1D(DA, DC, horizon=T, down_dims=(32, 64, 128))
    with pytest.raises(ValueError, match="T=6"):
        model(torch.zeros(1, 6, DA), torch.zeros(1), torch.zeros(1, DC))
    ConditionalUnet1D(DA, DC, horizon=10, down_dims=(32, 64))  # 2 levels -> even is enough


def test_unet_runs_at_other_horizons():
    model = ConditionalUnet1D(DA, DC, horizon=T, down_dims=(32, 64)).eval()
    x = torch.randn(2, 8, DA)
    t = torch.rand(2, 8) * 1000  # (B, T)
    assert model(x, t, torch.randn(2, DC)).shape == (2, 8, DA)


def test_fixed_horizon_backbones_reject_longer_chunks():
    for name in ("mlp", "transformer"):
        model = make_backbone(name, DA, DC, T, **SMALL[name])
        with pytest.raises(ValueError, match="horizon"):
            model(torch.zeros(1, T + 4, DA), torch.zeros(1), torch.zeros(1, DC))


def test_make_backbone_unknown_name():
    msg = "unknown backbone 'resnet'; valid backbones: unet, mlp, transformer"
    with pytest.raises(ValueError, match=msg):
        make_backbone("resnet", DA, DC, T)


def test_make_backbone_passes_kwargs():
    model = make_backbone("unet", DA, DC, T, down_dims=(16, 32))
    assert isinstance(model, ConditionalUnet1D)
    assert len(model.down) == 2


def test_backbone_learns_a_fixed_mapping(name):
    """200 Adam steps on a fixed random (x, t, cond) -> target map cut the loss by > 10x."""
    torch.manual_seed(0)
    model = make_backbone(name, DA, DC, T, **SMALL[name]).train()
    x, _, cond = inputs(1)
    t = torch.rand(B, T) * 1000  # per-element, the harder case
    target = torch.randn(B, T, DA, generator=torch.Generator().manual_seed(2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(200):
        loss = (model(x, t, cond) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])
