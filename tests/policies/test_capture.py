"""The reference sampler, with all noise given, is one static graph: it compiles with
``torch.compile(fullgraph=True)`` (no data-dependent Python branch, no host sync) and, on a
GPU, is captured by a CUDA graph that replays to the same values."""

import pytest
import torch
from test_families import SHAPES, toy_stats

from robopolicy.policies import MODELS, DiffusionConfig, FlowConfig, StreamingConfig

B = 2


def tiny(config_cls, **extra):
    values = {"horizon": 4, "n_obs_steps": 1, "n_action_steps": 2, "shapes": SHAPES,
              "backbone": "mlp", "backbone_kwargs": {"hidden_dim": 32, "n_layers": 1}}
    torch.manual_seed(0)
    model = MODELS[config_cls.family](config_cls(**values | extra))
    model.fit_normalizer(toy_stats())
    return model.eval()


# each family with a stochastic transition, so the noise path is in the graph too
CASES = {
    "diffusion": lambda: tiny(DiffusionConfig, num_inference_steps=3, eta=0.5),
    "flow": lambda: tiny(FlowConfig, num_inference_steps=3, eta=0.5, integrator="midpoint"),
    # the UNet's per-element path and the re-noised past (To = 3) in the graph
    "streaming": lambda: tiny(StreamingConfig, num_inference_steps=4, eta=0.5, horizon=8,
                              n_obs_steps=3, n_action_steps=3, backbone="unet",
                              backbone_kwargs={"down_dims": (16, 32),
                                               "diffusion_step_embed_dim": 16}),
}


def reference_call(model, device="cpu"):
    """(function, inputs): the sampler as a function of tensors only."""
    g = torch.Generator(device).manual_seed(0)
    cond = torch.randn(B, model.obs_encoder.out_dim, generator=g, device=device)
    if model.config.family == "streaming":  # the steady-state call
        x = torch.randn(B, model.config.horizon, 2, generator=g, device=device)
        left = model.staircase.expand(B, -1).clone()
        noise = model.draw_stream_noise(B, warmup=False, generator=g)

        def call(x, left, cond, transitions, new_chunk, past):
            out = model.stream(x, left, cond, type(noise)(transitions, new_chunk, past),
                               warmup=False)
            return torch.cat([out.chunk, out.buffer], dim=1), out.steps_left

        return call, (x, left, cond, *noise)
    k = model.config.num_inference_steps
    noise = torch.randn(B, 4, 2, generator=g, device=device)
    step_noise = torch.randn(B, k, 4, 2, generator=g, device=device)

    def call(cond, noise, step_noise):
        return model.sample(cond, noise=noise, step_noise=step_noise)

    return call, (cond, noise, step_noise)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(CASES))
def test_reference_sampler_compiles_without_graph_breaks(family):
    """fullgraph=True fails on any graph break: a data-dependent branch, ``.item()``, a numpy
    round trip. The inductor backend generates and runs real kernels."""
    torch._dynamo.reset()
    model = CASES[family]()
    call, inputs = reference_call(model)
    with torch.no_grad():
        expected = call(*inputs)
        got = torch.compile(call, fullgraph=True, backend="inductor")(*inputs)
    for a, b in zip(torch.utils._pytree.tree_leaves(got),
                    torch.utils._pytree.tree_leaves(expected), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("family", sorted(CASES))
def test_reference_sampler_is_captured_by_a_cuda_graph(family):
    model = CASES[family]().cuda()
    call, inputs = reference_call(model, device="cuda")
    static = [x.clone() for x in inputs]
    with torch.no_grad():
        side = torch.cuda.Stream()  # warm up off the default stream, as capture requires
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                call(*static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = call(*static)
        for seed in (1, 2):  # new inputs copied into the static buffers, then replayed
            fresh = [x if x.dtype == torch.long else torch.randn(
                x.shape, generator=torch.Generator("cuda").manual_seed(seed), device="cuda")
                for x in inputs]
            for buffer, value in zip(static, fresh, strict=True):
                buffer.copy_(value)
            graph.replay()
            expected = call(*fresh)
            for a, b in zip(torch.utils._pytree.tree_leaves(out),
                            torch.utils._pytree.tree_leaves(expected), strict=True):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
