"""Per-decision latency at batch 1, per family and step count K: the reference sampler
(``predict_action``), the engine (eager and, on CPU, compiled; on a GPU, the CUDA graph), and
the floor: the same networks' forwards alone (the encoder once, then the K denoiser forwards
of one decision; a streaming call's K / h). All timed interleaved in one run, so load drifts
hit them alike; medians, and the p99 of each."""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from robopolicy.engine.engine import InferenceEngine
from robopolicy.policies import MODELS, DiffusionConfig, FlowConfig, StreamingConfig

LOWDIM = {"joint_pos": [7], "joint_vel": [7], "gripper_pos": [1], "eef_pos": [3],
          "eef_quat": [4], "object_pos": [3], "object_quat": [4], "action": [8]}  # panda_lift
CAMERAS = {"agentview_image": [84, 84, 3], "wrist_image": [84, 84, 3]}


def build(family: str, k: int, backbone: str, images: bool, device: str):
    config_cls = {"diffusion": DiffusionConfig, "flow": FlowConfig,
                  "streaming": StreamingConfig}[family]
    shapes = LOWDIM | (CAMERAS if images else {})
    extra = {"backbone": backbone}
    if backbone == "mlp":
        extra["backbone_kwargs"] = {"hidden_dim": 256, "n_layers": 3}
    window = ({"horizon": 16, "n_obs_steps": 2, "n_action_steps": 8} if family != "streaming"
              else {"horizon": 17, "n_obs_steps": 2, "n_action_steps": 8})
    model = MODELS[family](config_cls(shapes=shapes, num_inference_steps=k,
                                      image_keys=list(CAMERAS) if images else [],
                                      **window, **extra))
    model.fit_normalizer({key: {"min": -np.ones(s[0]), "max": np.ones(s[0])}
                          for key, s in LOWDIM.items()})
    model = model.to(device).eval()
    obs = {key: (torch.randint(0, 256, (1, 2, *s), dtype=torch.uint8, device=device)
                 if key in CAMERAS else torch.randn(1, 2, *s, device=device))
           for key, s in shapes.items() if key != "action"}
    return model, obs


def floor_call(model, obs):
    """The networks alone: encoder once, then the denoiser forwards of one decision."""
    n = model.config.num_inference_steps
    if model.config.family == "streaming":
        n = model.steps_per_call
    x = torch.randn(model.chunk_shape(1), device=model.device)
    t = torch.full((1,), 0.5, device=model.device)

    def call():
        cond = model.encode_obs(obs)
        for _ in range(n):
            model.backbone(x, t, cond)
    return call


def timed(fn, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start)


def measure(family: str, k: int, backbone: str, images: bool, device: str,
            repeats: int) -> dict:
    model, obs = build(family, k, backbone, images, device)
    state = model.init_state(1) if family == "streaming" else None
    calls = {"reference": lambda: model.predict_action(obs, state=state),
             "floor": floor_call(model, obs)}
    eager = InferenceEngine(model, backend="eager")
    calls["engine"] = lambda: eager(obs)
    fast_name = "cuda_graph" if device == "cuda" else "compile"
    fast = InferenceEngine(model, backend=fast_name)
    fast.warm_up(1)
    calls[fast_name] = lambda: fast(obs)
    with torch.no_grad():
        for fn in calls.values():  # warm every path (and streaming buffers) up
            for _ in range(3):
                fn()
        times = {name: [] for name in calls}
        for _ in range(repeats):  # interleaved
            for name, fn in calls.items():
                times[name].append(timed(fn, device))
    row = {"bench": "engine.latency", "family": family, "steps": k, "backbone": backbone,
           "cameras": len(CAMERAS) if images else 0, "device": device, "batch": 1}
    for name, values in times.items():
        row[f"{name}_ms"] = round(float(np.median(values)), 3)
        row[f"{name}_p99_ms"] = round(float(np.percentile(values, 99)), 3)
    row["engine_over_floor"] = round(row["engine_ms"] / row["floor_ms"], 3)
    row[f"{fast_name}_over_floor"] = round(row[f"{fast_name}_ms"] / row["floor_ms"], 3)
    return row


def run(workdir: str | None = None, quick: bool = False) -> list[dict]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    repeats = 10 if quick else 40
    cases = [("diffusion", 10, "mlp", False), ("flow", 10, "mlp", False),
             ("streaming", 16, "mlp", False)]
    if not quick:
        cases += [("diffusion", 10, "unet", False), ("diffusion", 100, "mlp", False),
                  ("flow", 10, "unet", False), ("streaming", 16, "unet", False),
                  ("diffusion", 10, "unet", True)]
    results = []
    for case in cases:
        torch._dynamo.reset()
        results.append(measure(*case, device=device, repeats=repeats))
        print(json.dumps(results[-1]), flush=True)
    return results
