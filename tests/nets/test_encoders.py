"""Observation encoder and the GroupNorm ResNet-18."""

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from robopolicy.nets.encoders import (
    LOWDIM_MLP_DIM,
    GlobalAvgPool,
    ObsEncoder,
    SpatialSoftmax,
    center_crop,
    crop_size,
    random_crop,
)
from robopolicy.nets.resnet import ResNet18GN

B, TO = 3, 2


def images(h=24, w=24, c=3, batch=B, same=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (1 if same else batch, TO, h, w, c), generator=g, dtype=torch.uint8)
    return x.expand(batch, -1, -1, -1, -1).contiguous() if same else x  # (B, To, H, W, C)


def test_lowdim_identity_is_flattened_input_in_sorted_key_order():
    shapes = {"z_pos": (3,), "a_quat": (4,), "m_grid": (2, 2)}
    enc = ObsEncoder(shapes, TO)
    nobs = {k: torch.randn(B, TO, *s) for k, s in shapes.items()}
    nobs["ignored_extra_key"] = torch.randn(B, 5)
    out = enc(nobs)
    expected = torch.cat([nobs[k].flatten(1) for k in ("a_quat", "m_grid", "z_pos")], dim=-1)
    assert enc.out_dim == TO * (3 + 4 + 4) == out.shape[1]
    torch.testing.assert_close(out, expected)
    assert not list(enc.parameters())


def test_lowdim_mlp_out_dim():
    shapes = {"pos": (3,), "vel": (6,)}
    enc = ObsEncoder(shapes, TO, lowdim="mlp")
    nobs = {k: torch.randn(B, TO, *s) for k, s in shapes.items()}
    out = enc(nobs)
    assert enc.out_dim == TO * 2 * LOWDIM_MLP_DIM  # one feature per key and step, not 3 + 6
    assert out.shape == (B, enc.out_dim)
    assert len(enc.lowdim_mlps) == 2 and list(enc.parameters())
    # features are (key, step) blocks, keys sorted, each step encoded on its own: changing
    # step 0 of "vel" changes that block only
    changed = {**nobs, "vel": nobs["vel"].clone()}
    changed["vel"][:, 0] += 1.0
    diff = (enc(changed) - out).abs().reshape(B, 2, TO, LOWDIM_MLP_DIM).amax(dim=(0, 3))
    assert diff[1, 0] > 0 and diff[0].max() == 0 and diff[1, 1] == 0
    with pytest.raises(ValueError, match="lowdim"):
        ObsEncoder(shapes, TO, lowdim="conv")


def test_missing_key_and_bad_shape_are_named():
    enc = ObsEncoder({"pos": (3,), "gripper": (1,)}, TO)
    with pytest.raises(KeyError, match="gripper"):
        enc({"pos": torch.zeros(B, TO, 3)})
    with pytest.raises(ValueError, match="'pos'"):
        enc({"pos": torch.zeros(B, TO + 1, 3), "gripper": torch.zeros(B, TO, 1)})


def test_image_encoder_accepts_uint8_and_out_dim_matches():
    shapes = {"cam": (24, 24, 3), "pos": (3,)}
    enc = ObsEncoder(shapes, TO, image_keys=["cam"], image_feature_dim=16).eval()
    assert enc.image_keys == ["cam"]
    assert ObsEncoder(shapes, TO).image_keys == []  # only named keys are cameras
    cam_encoder = enc.image_encoders[0]
    seen = []  # what the ResNet is fed (GroupNorm hides the input's scale from the output)
    cam_encoder.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    cam = images()
    out = enc({"cam": cam, "pos": torch.randn(B, TO, 3)})
    assert out.shape == (B, enc.out_dim) == (B, TO * (16 + 3))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    # every frame, centre-cropped in eval, channels first, uint8 [0, 255] mapped to [-1, 1]
    crop = center_crop(cam, crop_size(24, 24, cam_encoder.crop_ratio))  # (B, To, h, w, C)
    want = crop.flatten(0, 1).permute(0, 3, 1, 2).float() / 255.0 * 2.0 - 1.0
    assert len(seen) == 1 and seen[0].shape == (B * TO, 3, 22, 22)
    torch.testing.assert_close(seen[0], want, atol=0, rtol=0)


def test_random_crop_takes_one_window_per_sample():
    h = w = 10
    grid = (torch.arange(h)[:, None] * h + torch.arange(w)).to(torch.uint8)  # value = 10 r + c
    x = grid[None, None, :, :, None].expand(8, TO, h, w, 1)  # (B, To, H, W, 1)
    crops = random_crop(x, (7, 6))
    assert crops.shape == (8, TO, 7, 6, 1)
    for crop in crops:
        top, left = divmod(int(crop[0, 0, 0, 0]), h)
        for frame in crop:  # the same window for every frame of a sample
            assert torch.equal(frame[..., 0], grid[top: top + 7, left: left + 6])


def test_train_crops_differ_per_sample_and_call_eval_is_deterministic():
    torch.manual_seed(0)
    # 64 px: the crop leaves a 2x2 last feature map, so the keypoints can move with the crop
    enc = ObsEncoder({"cam": (64, 64, 3)}, TO, image_keys=["cam"], image_feature_dim=8)
    cam = enc.image_encoders[0]
    x = images(64, 64, batch=6, same=True)  # six copies of one window
    c1, c2 = cam.crop(x), cam.crop(x)
    assert c1.shape == (6, TO, 58, 58, 3)  # round(0.9 * 64)
    assert len({c.numpy().tobytes() for c in c1}) > 1  # samples get different crops
    assert not torch.equal(c1, c2)  # and a new crop each call
    out = enc({"cam": x})
    assert not torch.allclose(out[0], out[1])
    enc.eval()
    e1, e2 = enc({"cam": x}), enc({"cam": x})
    torch.testing.assert_close(e1, e2, atol=0, rtol=0)
    torch.testing.assert_close(e1, e1[:1].expand_as(e1), atol=1e-6, rtol=0)


def test_resnet18_gn_parameter_count_and_groupnorm():
    net = ResNet18GN()
    n = sum(p.numel() for p in net.parameters())
    # torchvision resnet18: 11,689,512 with fc (513,000) -> 11,176,512 without; GN == BN params
    assert n == 11_176_512
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 20 and all(m.num_channels // m.num_groups == 16 for m in norms)
    out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 512, 1, 1)


def test_no_batchnorm_and_one_encoder_per_camera_unless_shared(tmp_path):
    shapes = {"front.rgb": (24, 24, 3), "wrist.rgb": (20, 20, 3), "pos": (2,)}
    cams = ["front.rgb", "wrist.rgb"]
    enc = ObsEncoder(shapes, TO, image_keys=cams, image_feature_dim=8)
    assert len(enc.image_encoders) == 2
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in enc.modules())
    shared = ObsEncoder(shapes, TO, image_keys=cams, image_feature_dim=8,
                        share_camera_encoder=True)
    assert len(shared.image_encoders) == 1
    assert shared.out_dim == enc.out_dim == TO * (8 + 8 + 2)
    n_enc = sum(p.numel() for p in enc.parameters())
    assert sum(p.numel() for p in shared.parameters()) == n_enc // 2
    nobs = {"front.rgb": images(), "wrist.rgb": images(20, 20), "pos": torch.randn(B, TO, 2)}
    assert shared.eval()(nobs).shape == (B, shared.out_dim)
    # a checkpoint must hold no aliased tensors (safetensors refuses them)
    save_file(shared.state_dict(), tmp_path / "m.safetensors")
    assert set(load_file(tmp_path / "m.safetensors")) == set(shared.state_dict())


def test_image_key_validation():
    with pytest.raises(KeyError, match="top"):
        ObsEncoder({"pos": (3,)}, TO, image_keys=["top"])
    with pytest.raises(ValueError, match="channel"):
        ObsEncoder({"a": (8, 8, 3), "b": (8, 8, 1)}, TO, image_keys=["a", "b"],
                   share_camera_encoder=True)
    with pytest.raises(ValueError, match="crop_ratio"):
        ObsEncoder({"a": (8, 8, 3)}, TO, image_keys=["a"], crop_ratio=0.0)
    with pytest.raises(ValueError, match=r"image key 'pos' must have a per-step \(H, W, C\)"):
        ObsEncoder({"pos": (3,)}, TO, image_keys=["pos"])


def test_gradients_reach_the_image_encoder():
    enc = ObsEncoder({"cam": (24, 24, 3), "pos": (3,)}, TO, image_keys=["cam"],
                     image_feature_dim=8, lowdim="mlp")
    out = enc({"cam": images(), "pos": torch.randn(B, TO, 3)})
    out.square().mean().backward()
    assert all(p.grad is not None for p in enc.parameters())


def test_spatial_softmax_finds_where_a_feature_is():
    pool = SpatialSoftmax(in_channels=1, n_keypoints=1)
    with torch.no_grad():  # the keypoint map is the input itself, sharpened
        pool.keypoints.weight.fill_(50.0)
        pool.keypoints.bias.zero_()
    x = torch.zeros(2, 1, 5, 9)
    x[0, 0, 0, 8] = 1.0  # top right
    x[1, 0, 4, 0] = 1.0  # bottom left
    out = pool(x)  # (N, 2): expected x then expected y, in [-1, 1]
    torch.testing.assert_close(out, torch.tensor([[1.0, -1.0], [-1.0, 1.0]]), atol=1e-6, rtol=0)
    # an average pool of the same two inputs cannot tell them apart
    torch.testing.assert_close(GlobalAvgPool(1)(x)[0], GlobalAvgPool(1)(x)[1])


def test_pool_and_resnet_widths_options():
    shapes = {"cam": (24, 24, 3)}
    full = ObsEncoder(shapes, TO, image_keys=["cam"], image_feature_dim=8, pool="avg")
    narrow = ObsEncoder(shapes, TO, image_keys=["cam"], image_feature_dim=8,
                        resnet_widths=(32, 64, 128, 256))
    n_full = sum(p.numel() for p in full.image_encoders[0].backbone.parameters())
    n_narrow = sum(p.numel() for p in narrow.image_encoders[0].backbone.parameters())
    assert n_full == 11_176_512 and 3.9 < n_full / n_narrow < 4.1  # ~4x fewer weights
    assert isinstance(full.image_encoders[0].pool, GlobalAvgPool)
    assert full.image_encoders[0].proj.in_features == 512  # the pooled channels
    assert isinstance(narrow.image_encoders[0].pool, SpatialSoftmax)
    assert narrow.eval()({"cam": images()}).shape == (B, TO * 8)
    with pytest.raises(ValueError, match="pool"):
        ObsEncoder(shapes, TO, image_keys=["cam"], pool="max")
