"""``robopolicy teleop``: record demonstrations by hand, or correct a trained model.

    robopolicy teleop --task lift --device keyboard --out demos.zarr [--images] [--episodes N]
    robopolicy teleop --task lift --device scripted --episodes 3 --out demos.zarr
    robopolicy teleop --task panda_lift --device spacemouse --out demos.zarr  # joint space: IK
    robopolicy teleop --task lift --device keyboard --policy CHECKPOINT_DIR --out dagger.zarr
    robopolicy teleop --task lift --device keyboard --out demos.zarr --record-device s.npz
    robopolicy teleop --task lift --device replay --replay s.npz --out again.zarr
    robopolicy teleop --robot configs/robots/panda_real.yaml --device spacemouse --out d.zarr
    robopolicy teleop --robot panda_sim --task panda_lift --device scripted --out d.zarr

Every registered task can be driven: each declares how a device's end-effector command
becomes its action (``robopolicy.sim.ee_command``). An existing ``--out`` is appended to (same
task and rate required). With ``--robot`` the device drives a ROS 2 robot instead
(``robopolicy.real.ros_teleop``): IK on its MJCF, its safety filter, its command topics.
"""

from __future__ import annotations

import argparse
import json
import sys

from robopolicy.teleop.device import DEVICES


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "teleop", help="record demos with an input device; intervene on a trained model",
        description="Drive a task with an input device and record episodes into a store "
                    "(appends to an existing one). With --policy a trained model drives until "
                    "the operator intervenes.")
    p.add_argument("--task", help="registered task name (see `sim list`); with --robot: the "
                   "name stored (and the scripted device's expert)")
    p.add_argument("--robot", metavar="CONFIG",
                   help="drive a ROS 2 robot: its robot config (bundled name or YAML path)")
    p.add_argument("--image-size", type=int, default=84,
                   help="with --robot --images: camera frames are stored N x N")
    p.add_argument("--device", required=True, help=f"one of: {', '.join(DEVICES)}")
    p.add_argument("--out", required=True, help="episode store to create or append to")
    p.add_argument("--episodes", type=int, help="stop after this many saved episodes")
    p.add_argument("--images", action="store_true", help="record camera observations")
    p.add_argument("--policy", metavar="CHECKPOINT_DIR",
                   help="a trained model drives; the intervene key hands control over and back")
    p.add_argument("--replay", metavar="FILE", help="device stream for --device replay")
    p.add_argument("--record-device", metavar="FILE",
                   help="also save the raw device readings (.npz), for --device replay")
    p.add_argument("--notes", default="", help="operator notes stored with every episode")
    p.add_argument("--seed", type=int, default=0, help="episode attempt i uses seed + i")
    p.add_argument("--scale", type=float, help="translation gain (default 1)")
    p.add_argument("--rot-scale", type=float, help="rotation gain (default: --scale)")
    p.add_argument("--deadzone", type=float, help="ignore axis readings below this, in [0, 1)")
    p.add_argument("--rate", type=float, help="control rate in Hz (default: the task's; "
                   "0: as fast as the env steps)")
    p.add_argument("--max-steps", type=int, help="time limit of an episode (default: task's)")
    p.add_argument("--keep-failures", action="store_true",
                   help="save episodes that time out without success too")
    p.add_argument("--display", choices=("auto", "window", "status", "none"), default="auto",
                   help="camera window when a display exists, else a status line on stderr")
    p.set_defaults(run=main)


def build_device(args: argparse.Namespace):
    """The device the arguments name, wrapped to save its stream with --record-device."""
    from robopolicy.teleop.device import TeleopError, make_device
    from robopolicy.teleop.scripted import StreamRecorder

    kwargs = {}
    if args.device == "replay":
        kwargs["path"] = args.replay
    elif args.replay:
        raise TeleopError("--replay needs --device replay")
    if args.device == "scripted":
        kwargs["seed"] = args.seed
    device = make_device(args.device, scale=args.scale, rot_scale=args.rot_scale,
                         deadzone=args.deadzone, **kwargs)
    return StreamRecorder(device, args.record_device) if args.record_device else device


def main(args: argparse.Namespace) -> int:
    from robopolicy.teleop.device import TeleopError
    from robopolicy.teleop.display import make_display
    from robopolicy.teleop.recorder import record

    if args.episodes is not None and args.episodes < 1:
        raise TeleopError(f"--episodes must be >= 1, got {args.episodes}")
    if not (args.task or args.robot):
        raise TeleopError("give --task (a simulated task) or --robot (a ROS 2 robot config)")
    device = build_device(args)
    common = dict(images=args.images, policy_dir=args.policy, rate=args.rate,
                  episodes=args.episodes, notes=args.notes, seed=args.seed,
                  keep_failures=args.keep_failures)
    if args.robot:
        from robopolicy.real.ros_teleop import record_robot

        # a robot without cameras has no picture for a window: the status line instead
        kind = args.display
        if kind == "auto" and not args.images:
            kind = "status" if sys.stderr.isatty() else "none"
        summary = record_robot(args.robot, device, args.out, task=args.task or "",
                               image_size=args.image_size, display=make_display(kind),
                               max_episode_steps=args.max_steps, **common)
    else:
        overrides = {"max_episode_steps": args.max_steps} if args.max_steps else {}
        summary = record(args.task, device, args.out, display=make_display(args.display),
                         env_overrides=overrides, **common)
    print(f"saved {summary['saved_episodes']} episodes to {args.out} "
          f"({summary['store_episodes']} in the store)")
    print(json.dumps({k: summary[k] for k in ("step_period_median_ms", "step_period_p99_ms",
                                              "rate_hz")}), file=sys.stderr)
    return 0
