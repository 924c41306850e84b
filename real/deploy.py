"""``robopolicy deploy CHECKPOINT --robot CONFIG.yaml [--sim TASK]``: the controller node from a
pip install (rclpy from PyPI wheels; no ROS install, no colcon).

The node is configured and activated at once (``--no-autostart`` leaves it unconfigured for a
lifecycle manager). With ``--sim TASK`` the simulated robot runs in a child process (its own
DDS participant: the whole loop goes over the wire) for ``--episodes`` episodes, and the
command prints one JSON summary: episode results, success rate, decision latency and the
node's interventions. Without ``--sim`` it runs until interrupted.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from robopolicy.errors import RobopolicyError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("deploy", help="run a checkpoint on a robot through ROS 2")
    p.add_argument("checkpoint", help="checkpoint directory (config.json + model.safetensors)")
    p.add_argument("--robot", required=True,
                   help="robot config YAML, or a bundled one: panda_sim, panda_sim_cameras, "
                   "panda_real, ur5e_real")
    p.add_argument("--sim", metavar="TASK", help="also run the simulated robot on this native "
                   "arm task (e.g. panda_lift) in a child process")
    p.add_argument("--episodes", type=int, default=10, help="--sim: episodes to run")
    p.add_argument("--seed", type=int, default=100_000, help="--sim: episode i uses seed + i")
    p.add_argument("--max-episode-steps", type=int, help="--sim: shorter episodes")
    p.add_argument("--backend", default="auto", help="engine backend: auto, eager, compile, "
                   "cuda_graph")
    p.add_argument("--device", help="engine device (default: cuda when available, else cpu)")
    p.add_argument("--no-inpaint", action="store_true", help="no real-time chunking")
    p.add_argument("--no-autostart", action="store_true",
                   help="leave the node unconfigured for a lifecycle manager")
    p.add_argument("--out", help="write the summary JSON here")
    p.set_defaults(run=main)


SWITCH_INTERVAL = 0.0005  # s: the GIL switch interval of a process that runs the node


class Deployment:
    """The node on a MultiThreadedExecutor in a background thread (a context of its own)."""

    def __init__(self, checkpoint: str, robot_path: str, **node_options):
        import rclpy
        from rclpy.executors import MultiThreadedExecutor

        from robopolicy.real.robot_config import load_robot_config
        from robopolicy.real.ros_node import ControllerNode

        self.robot = load_robot_config(robot_path)
        # The executor's threads and the inference thread share the GIL, and an eager engine
        # gives it up and takes it back at every op: at the default 5 ms switch interval each
        # take-back can wait a whole interval. Measured over DDS on 2 cores (panda_lift, MLP
        # flow policy, 50 episodes): decisions p50 129 -> 59 ms, success 0.18 -> 0.82.
        sys.setswitchinterval(SWITCH_INTERVAL)
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = ControllerNode(checkpoint, self.robot, context=self.context,
                                   **node_options)
        # control and inference each get a thread, plus one for services and diagnostics
        self.executor = MultiThreadedExecutor(num_threads=3, context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        with contextlib.suppress(ExternalShutdownException):  # rclpy shut down under it
            self.executor.spin()

    def start(self) -> None:
        """configure + activate; a failed configure is one error line."""
        from rclpy.lifecycle import TransitionCallbackReturn

        if self.node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            raise RobopolicyError(self.node.error or "configure failed (see the node's log)")
        if self.node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
            raise RobopolicyError("activate failed (see the node's log)")

    def close(self) -> None:
        import rclpy

        state = self.node._state_label()
        if state == "active":
            self.node.trigger_deactivate()
        if state in ("active", "inactive"):
            self.node.trigger_cleanup()
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self.thread.join(timeout=2.0)


def checkpoint_image_size(checkpoint: str) -> int | None:
    """The height of the checkpoint's camera images (what the simulated robot renders), or
    None for a low-dim policy. The simulated cameras are square: a policy of non-square
    images needs ``resize`` in the robot config."""
    try:
        config = json.loads((Path(checkpoint) / "config.json").read_text())
        shapes = [config["shapes"][k] for k in config.get("image_keys") or []]
        return int(shapes[0][0]) if shapes else None
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None  # a broken checkpoint: the node's configure names what is wrong


def start_sim(task: str, robot_path: str, episodes: int, seed: int,
              max_episode_steps: int | None, reset_service: str,
              image_size: int | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "robopolicy.real.sim_robot", "--task", task,
               "--robot", robot_path, "--episodes", str(episodes), "--seed", str(seed),
               "--reset-service", reset_service]
    if image_size:
        command += ["--image-size", str(image_size)]
    if max_episode_steps:
        command += ["--max-episode-steps", str(max_episode_steps)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def run_sim(deployment: Deployment, child: subprocess.Popen, timeout: float) -> list[dict]:
    """Wait for the simulated robot's episodes; its results, one JSON line each."""
    try:
        out, _ = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.terminate()
        out, _ = child.communicate(timeout=10)
        raise RobopolicyError(f"the simulated robot did not finish within {timeout:.0f} s "
                              f"(node: {deployment.node.status()})") from None
    if child.returncode:
        raise RobopolicyError(f"the simulated robot exited with code {child.returncode}")
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def deploy(checkpoint: str, robot: str, sim: str | None = None, episodes: int = 10,
           seed: int = 100_000, max_episode_steps: int | None = None, autostart: bool = True,
           **node_options) -> dict:
    """Run the node (and the simulated robot); returns the summary (with ``--sim``)."""
    import torch

    # one torch thread: the control loop and DDS keep the other cores busy (closed_loop's
    # measurement: two intra-op threads made a batch-1 decision slower)
    torch.set_num_threads(1)
    if not Path(checkpoint).is_dir():
        raise RobopolicyError(f"{checkpoint}: no such checkpoint directory")
    deployment = Deployment(checkpoint, robot, **node_options)
    child = None
    try:
        if sim:
            reset = f"/{deployment.node.get_name()}/reset_episode"
            child = start_sim(sim, robot, episodes, seed, max_episode_steps, reset,
                              checkpoint_image_size(checkpoint))
        if autostart:
            deployment.start()
        if not sim:
            while True:
                time.sleep(1.0)
        steps = max_episode_steps or 500
        started = time.monotonic()
        results = run_sim(deployment, child, timeout=60 + 3 * episodes * steps
                          / deployment.robot.rates.policy_hz)
        status = deployment.node.status()
        wins = sum(r["success"] for r in results)
        return {"checkpoint": str(checkpoint), "task": sim, "episodes": len(results),
                "success_rate": wins / max(len(results), 1), "results": results,
                "seconds": round(time.monotonic() - started, 2), "node": status}
    finally:
        if child is not None and child.poll() is None:
            child.terminate()
            child.wait(timeout=10)
        deployment.close()


def main(args) -> int:
    try:
        summary = deploy(args.checkpoint, args.robot, args.sim, args.episodes, args.seed,
                         args.max_episode_steps, autostart=not args.no_autostart,
                         backend=args.backend, device=args.device,
                         inpaint=not args.no_inpaint)
    except KeyboardInterrupt:
        return 0
    print(json.dumps(summary))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2))
    return 0
