"""Model speed on this machine: batch-1 latency per family and step count, streaming's
per-call cost against a full DDIM call with the same K (same run), training steps/s."""

from __future__ import annotations

import json
import statistics
import time

import numpy as np
import torch

from robopolicy.policies import (
    DiffusionConfig,
    DiffusionModel,
    FlowConfig,
    FlowModel,
    StreamingConfig,
    StreamingDiffusionModel,
)

SHAPES = {"robot0_eef_pos": [3], "robot0_eef_quat": [4], "robot0_gripper_qpos": [2],
          "object": [10], "action": [7]}  # Lift, low-dim


def _model(cls, cfg_cls, **kwargs):
    model = cls(cfg_cls(shapes=SHAPES, **kwargs))
    stats = {k: {"min": -np.ones(v[0]), "max": np.ones(v[0])} for k, v in SHAPES.items()}
    model.fit_normalizer(stats)
    return model.eval()


def _obs(batch: int, n_obs_steps: int) -> dict[str, torch.Tensor]:
    return {k: torch.randn(batch, n_obs_steps, v[0]) for k, v in SHAPES.items() if k != "action"}


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def latencies(repeats: int) -> list[dict]:
    cases = [("diffusion", "ddpm", 100, _model(DiffusionModel, DiffusionConfig, sampler="ddpm",
                                               num_inference_steps=100)),
             ("diffusion", "ddim", 10, _model(DiffusionModel, DiffusionConfig, sampler="ddim",
                                              num_inference_steps=10)),
             ("flow", "euler", 10, _model(FlowModel, FlowConfig, num_inference_steps=10))]
    results = []
    for family, sampler, k, model in cases:
        obs = _obs(1, model.config.n_obs_steps)
        ms = _median_ms(lambda m=model, o=obs: m.predict_action(o), repeats)
        results.append({"bench": "models.latency", "family": family, "sampler": sampler,
                        "steps": k, "batch": 1, "ms": round(ms, 2)})
    return results


def sampler_overhead(repeats: int, k: int = 10) -> dict:
    """DDIM-K per decision (``predict_action``: normalize, encode, K transitions, unnormalize)
    against K raw forwards of the same backbone at batch 1, interleaved: what the sampler
    costs beyond the network."""
    model = _model(DiffusionModel, DiffusionConfig, sampler="ddim", num_inference_steps=k)
    obs = _obs(1, model.config.n_obs_steps)
    with torch.no_grad():
        cond = model.encode_obs(obs)
        x, t = torch.randn(1, model.config.horizon, 7), torch.full((1,), 50.0)

        def raw():
            for _ in range(k):
                model.backbone(x, t, cond)

        decision, forwards = [], []
        for _ in range(repeats):  # interleaved pairs: load drifts hit both alike
            decision.append(_median_ms(lambda: model.predict_action(obs), 1))
            forwards.append(_median_ms(raw, 1))
    ratios = [d / f for d, f in zip(decision, forwards, strict=True)]
    return {"bench": "models.sampler_overhead", "sampler": "ddim", "steps": k,
            "decision_ms": round(statistics.median(decision), 2),
            "raw_forwards_ms": round(statistics.median(forwards), 2),
            "ratio": round(statistics.median(ratios), 3)}  # the median of the paired ratios


def streaming_vs_ddim(repeats: int, k: int = 16) -> dict:
    stream = _model(StreamingDiffusionModel, StreamingConfig, horizon=16, n_obs_steps=1,
                    n_action_steps=4, num_inference_steps=k)
    full = _model(DiffusionModel, DiffusionConfig, horizon=16, n_obs_steps=1, n_action_steps=4,
                  sampler="ddim", num_inference_steps=k)
    full.load_state_dict(stream.state_dict())
    obs, state = _obs(1, 1), stream.init_state(1)
    stream.predict_action(obs, state=state)  # the episode's first call (costs K)
    per_call, ddim = [], []
    for _ in range(repeats):  # interleaved, so machine load drifts hit both alike
        per_call.append(_median_ms(lambda: stream.predict_action(obs, state=state), 1))
        ddim.append(_median_ms(lambda: full.predict_action(obs), 1))
    per_call, ddim = statistics.median(per_call), statistics.median(ddim)
    return {"bench": "models.streaming_per_call", "steps": k, "chunks": stream.config.n_chunks,
            "streaming_ms": round(per_call, 2), "ddim_full_ms": round(ddim, 2),
            "ratio": round(per_call / ddim, 3)}


def training_steps_per_s(batch: int = 256, steps: int = 5) -> list[dict]:
    results = []
    for family, cls, cfg in (("diffusion", DiffusionModel, DiffusionConfig),
                             ("flow", FlowModel, FlowConfig),
                             ("streaming", StreamingDiffusionModel, StreamingConfig)):
        model = _model(cls, cfg).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        t = model.config.horizon
        batch_data = {"obs": _obs(batch, model.config.n_obs_steps),
                      "action": torch.rand(batch, t, 7) * 2 - 1}

        def step(m=model, o=opt, b=batch_data):
            loss, _ = m.compute_loss(b)
            o.zero_grad()
            loss.backward()
            o.step()

        ms = _median_ms(step, steps)
        results.append({"bench": "models.train_steps_per_s", "family": family, "batch": batch,
                        "steps_per_s": round(1000 / ms, 2)})
    return results


def run(workdir: str | None = None, quick: bool = False) -> list[dict]:
    """Print and return the model benchmarks (UNet backbone, default sizes, CPU threads as set)."""
    repeats = 3 if quick else 15
    results = latencies(repeats) + [sampler_overhead(repeats * 3), streaming_vs_ddim(repeats)]
    results += training_steps_per_s(steps=2 if quick else 5)
    for result in results:
        print(json.dumps(result), flush=True)
    return results
