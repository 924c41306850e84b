"""The controller as a ROS 2 lifecycle node: a thin adapter over the controller core
(:class:`~robopolicy.real.controller.Controller`), which imports no ROS.

Lifecycle: ``configure`` loads the checkpoint, builds and warms up the inference engine
(real-time chunking by default) and checks the robot config against it (every observation key,
its shape, the action size) and against /joint_states when a message is already known;
``activate`` starts commanding; ``deactivate`` sends one hold and stops; ``cleanup`` frees the
engine. Services (``std_srvs/Trigger``, under the node's name): ``start``, ``stop``,
``estop``, ``rearm``, ``reset_episode``.

Threads: subscriptions, the command timer, services and diagnostics share the *control*
callback group (so the controller's state is touched by one callback at a time); decisions
run as a guard-condition callback in the *inference* group, so a MultiThreadedExecutor keeps
commanding while the policy thinks. Every message is checked (:mod:`~robopolicy.real.ros_io`)
before it reaches the controller; every command leaves through the safety filter, and a last
check refuses anything non-finite or outside the limits.

Commands: with ``command.type: position`` the filtered command goes out every command period.
With ``trajectory`` a ``JointTrajectory`` goes out every policy period (a hold at once): its
first point is the filtered command, one command period ahead, then the chunk's planned
actions up to ``command.lookahead`` seconds ahead, at their own times, each passed through the
filter's limits from the point before (:meth:`SafetyFilter.preview`), so the robot's
joint_trajectory_controller interpolates the chunk instead of a stream of single targets.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from robopolicy.errors import RobopolicyError
from robopolicy.real import ros_io
from robopolicy.real.robot_config import RobotConfig
from robopolicy.real.robot_inputs import RobotInputs

NODE_NAME = "robopolicy_controller"
SERVICES = ("start", "stop", "estop", "rearm", "reset_episode")
JOINT_WAIT = 1.0  # s configure waits for a first /joint_states to check its joint names


class GroupPool:
    """The inference worker's pool: jobs run as a guard-condition callback in ``group`` of
    the node's executor, not in a thread of their own (the node's threads are the
    executor's)."""

    def __init__(self, node, group):
        self.jobs: collections.deque = collections.deque()
        self.guard = node.create_guard_condition(self._run, callback_group=group)
        self.node = node

    def submit(self, fn, *args) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.jobs.append((future, fn, args))
        self.guard.trigger()
        return future

    def _run(self) -> None:
        while self.jobs:
            future, fn, args = self.jobs.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except Exception as exc:  # handed to the control loop, which holds on it
                future.set_exception(exc)

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        while self.jobs:
            self.jobs.popleft()[0].cancel()
        self.node.destroy_guard_condition(self.guard)


class ControllerNode(LifecycleNode):
    """``ControllerNode(checkpoint, robot_config)``; drive it through its lifecycle."""

    def __init__(self, checkpoint: str, robot: RobotConfig, *, name: str = NODE_NAME,
                 backend: str = "auto", device: str | None = None, inpaint: bool = True,
                 seed: int = 0, **node_kwargs):
        super().__init__(name, **node_kwargs)  # e.g. context=
        self.checkpoint, self.robot = str(checkpoint), robot
        self.options = {"backend": backend, "device": device, "inpaint": inpaint,
                        "seed": seed}
        self.control_group = MutuallyExclusiveCallbackGroup()
        self.inference_group = MutuallyExclusiveCallbackGroup()
        self.spec = robot.robot_spec()
        self.malformed: collections.Counter[str] = collections.Counter()
        self.latencies: collections.deque = collections.deque(maxlen=1000)  # s
        self.engine = self.controller = None
        self.error, self.fault = "", ""
        self.running = self.rearm_pending = False
        self.reset_time, self.sent, self.seen_decisions = 0.0, 0, 0
        self.next_trajectory = -np.inf  # trajectory commands: when the next one is due
        self.lock = threading.Lock()  # transitions (any thread) vs. control callbacks
        self.entities: list = []  # what configure creates and cleanup destroys
        self.diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(1.0 / robot.rates.diagnostics_hz, self._publish_diagnostics,
                          callback_group=self.control_group)
        for service in SERVICES:
            self.create_service(Trigger, f"~/{service}", self._service(service),
                                callback_group=self.control_group)

    def now(self) -> float:
        """Seconds on the node's clock: what message stamps are compared with."""
        return ros_io.now_seconds(self)

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            with self.lock:
                self._configure()
        except RobopolicyError as exc:
            self.error = f"configure failed: {exc}"
            self.get_logger().error(self.error)
            self._release()
            return TransitionCallbackReturn.FAILURE
        self.error = ""
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self.lock:
            self._restart_episode()
            self.running = True
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self.lock:
            self._hold_and_stop()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self.lock:
            self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self.lock:
            self.running = False
            self._release()
        return TransitionCallbackReturn.SUCCESS

    def _configure(self) -> None:
        import torch

        from robopolicy.engine import InferenceEngine
        from robopolicy.policies import load_model
        from robopolicy.real.controller import Controller, engine_policy
        from robopolicy.real.safety import SafetyFilter

        model = load_model(self.checkpoint, self.options["device"] or "cpu")
        cfg, robot = model.config, self.robot
        robot.check_model(model.obs_keys, cfg.shapes, model.action_dim, self.spec.dof,
                          list(cfg.image_keys))
        self.obs_keys, self.shapes = list(model.obs_keys), dict(cfg.shapes)
        self._create_io()
        inpaint = self.options["inpaint"] and cfg.family != "streaming"
        device = self.options["device"] or ("cuda" if torch.cuda.is_available() else "cpu")
        self.engine = InferenceEngine(model, device=device, backend=self.options["backend"],
                                      inpaint=inpaint, seed=self.options["seed"])
        self.engine.warm_up(1)
        self.inputs.check_joint_names(JOINT_WAIT)
        period, command_period = 1.0 / robot.rates.policy_hz, 1.0 / robot.rates.command_hz
        safety = SafetyFilter(self.spec, command_period, robot.safety_config(), clock=self.now)
        keys = self.obs_keys + [k for k in ("joint_pos", "gripper_pos")
                                if k not in self.obs_keys and k in robot.provided_keys()]
        self.controller = Controller(
            engine_policy(self.engine, period), obs_keys=keys, n_obs_steps=cfg.n_obs_steps,
            period=period, command_period=command_period, safety=safety, clock=self.now,
            max_obs_age=robot.max_obs_age, n_action_steps=cfg.n_action_steps,
            pool=GroupPool(self, self.inference_group))  # decisions: the inference group
        self.entities.append(self.create_timer(command_period, self._tick,
                                               callback_group=self.control_group))

    def _create_io(self) -> None:
        robot = self.robot
        self.inputs = RobotInputs(self, robot, self.obs_keys, self.shapes, self._observe,
                                  malformed=self.malformed, group=self.control_group)
        subs = self.inputs.subscriptions
        command = ros_io.command_qos(robot.qos)
        msg_type = Float64MultiArray if robot.command.type == "position" else JointTrajectory
        self.command_pub = self.create_lifecycle_publisher(msg_type, robot.command.topic,
                                                           command)
        self.gripper_pub = (self.create_lifecycle_publisher(Float64MultiArray,
                                                            robot.gripper.command, command)
                            if robot.gripper.command else None)
        self.entities += subs + [p for p in (self.command_pub, self.gripper_pub) if p]

    def _release(self) -> None:
        """Everything configure made, destroyed; the engine freed."""
        self.running = False
        for entity in self.entities:
            if hasattr(entity, "cancel"):
                entity.cancel()
                self.destroy_timer(entity)
            elif hasattr(entity, "topic_name") and hasattr(entity, "publish"):
                self.destroy_lifecycle_publisher(entity)
            else:
                self.destroy_subscription(entity)
        if self.controller is not None:
            self.controller.close()
        self.entities, self.controller, self.engine = [], None, None
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # torch is a dependency; nothing to free without it
            pass

    # ------------------------------------------------------------------ observations
    def _observe(self, values: dict[str, np.ndarray], stamp: float) -> None:
        controller = self.controller  # one reference: cleanup may drop it meanwhile
        if controller is None or stamp < self.reset_time:
            return  # before the episode started: a message from the last one
        for key, value in values.items():
            controller.observe(key, value, stamp)

    # ------------------------------------------------------------------ commanding
    def _tick(self) -> None:
        if not self.running or self.controller is None or not self.lock.acquire(blocking=False):
            return
        try:
            points = self._tick_locked()
        finally:
            self.lock.release()
        if points is not None:
            self._publish(*points)

    def _tick_locked(self) -> tuple | None:
        """(command, (times, arm positions)) to publish this tick, or None."""
        if self.rearm_pending and not self._rearm_from_measured():
            return None
        try:
            command = self.controller.tick()
            hold = self.controller.safety.holding  # the filter's one hold
            self._track_latency()
        except Exception as exc:  # the policy raised in the inference group: hold, latched
            first = not self.controller.safety.estopped
            self._on_fault(exc)
            command, hold = (self._hold_command() if first else None), True
        if command is None:
            return None
        points = self._points(command, hold)  # under the lock: it reads the plan
        return None if points is None else (command, points)

    def _track_latency(self) -> None:
        decisions = self.controller.stats["decisions"]
        if decisions > self.seen_decisions and self.controller.worker.latencies:
            self.latencies.append(self.controller.worker.latencies[-1])
        self.seen_decisions = decisions

    def _on_fault(self, exc: Exception) -> None:
        self.fault = f"inference_error: {type(exc).__name__}: {exc}".splitlines()[0]
        self.get_logger().error(f"{self.fault}; holding, e-stop latched (rearm to resume)")
        self.controller.worker.pending = None  # the failed decision is gone
        self.controller.safety.estop()
        self.controller.safety.interventions["inference_error"] += 1

    def _rearm_from_measured(self) -> bool:
        """After a reset: restart the filter from the first fresh measurement (arm and
        gripper), so commanding starts where the arm is now."""
        latest = self.controller.obs.latest("joint_pos")
        if latest is None:
            return False
        gripper = self.controller.obs.latest("gripper_pos")
        if not self.controller.safety.estopped:
            self.controller.safety.rearm(None if gripper is None else float(gripper[1][0]))
        self.rearm_pending = False
        return True

    def _hold_command(self) -> np.ndarray | None:
        """The measured position inside the filter's limits, with the last gripper opening:
        what a stop commands (as the safety filter's own hold)."""
        if self.controller is None:
            return None
        latest = self.controller.obs.latest("joint_pos")
        if latest is None:
            return None
        safety = self.controller.safety
        arm = np.clip(latest[1], safety.limits.lower, safety.limits.upper)
        return np.append(arm, safety.gripper)

    def _points(self, command: np.ndarray, hold: bool
                ) -> tuple[np.ndarray, np.ndarray] | None:
        """(times (n,), arm positions (n, dof)) to send for ``command``: itself, one command
        period ahead; for trajectory commands, with the chunk's next planned actions, once per
        policy period (a hold at once, alone). None: nothing due this tick."""
        dt = 1.0 / self.robot.rates.command_hz
        arm = np.asarray(command[:self.spec.dof], dtype=float)
        if self.robot.command.type == "position" or hold or self.controller is None:
            self.next_trajectory = -np.inf  # after a hold the next trajectory goes at once
            return np.array([dt]), arm[None]
        now, period = self.now(), 1.0 / self.robot.rates.policy_hz
        if now < self.next_trajectory - 0.5 * dt:  # due at the tick nearest each period
            return None
        self.next_trajectory = (self.next_trajectory if now - self.next_trajectory < period
                                else now) + period
        c = self.controller
        measured = c.obs.latest("joint_pos")
        if measured is None:
            return np.array([dt]), arm[None]
        schedule = c.schedule
        return c.safety.preview(arm, measured[1], schedule.times - now, schedule.actions,
                                self.robot.lookahead)

    def _publish(self, command: np.ndarray, points: tuple[np.ndarray, np.ndarray] | None = None
                 ) -> None:
        dof = self.spec.dof
        times, arms = points if points is not None else (
            np.array([1.0 / self.robot.rates.command_hz]), command[None, :dof])
        # the filter guarantees both; a command that breaks them is a bug, and never leaves
        if command.shape != (dof + 1,) or not np.isfinite(command).all() or not (
                np.isfinite(arms).all() and np.isfinite(times).all()) or (
                (arms < self.spec.lower).any() or (arms > self.spec.upper).any()):
            self.malformed["refused_command"] += 1
            return
        if self.robot.command.type == "position":
            self.command_pub.publish(ros_io.array_msg(arms[0]))
        else:
            self.command_pub.publish(ros_io.trajectory_msg(self.robot.joints, arms, times))
        if self.gripper_pub is not None:
            self.gripper_pub.publish(ros_io.array_msg(command[dof:]))
        self.sent += 1

    def _hold_and_stop(self) -> None:
        if self.running:
            command = self._hold_command()
            if command is not None:
                self._publish(command)
        self.running = False
        if self.controller is not None:
            self.controller.reset()

    def _restart_episode(self) -> None:
        """A new episode: no observations before now, no chunk, a fresh engine, and the
        filter restarted from the next measurement."""
        if self.controller is None:
            return
        self.controller.reset()
        self.engine.reset()
        self.reset_time = self.now()
        self.rearm_pending = True

    # ------------------------------------------------------------------ services
    def _service(self, name: str):
        handler = getattr(self, f"_srv_{name}")

        def callback(request, response):
            with self.lock:
                response.success, response.message = handler()
            self.get_logger().info(f"{name}: {response.message}")
            return response
        return callback

    def _srv_start(self) -> tuple[bool, str]:
        if self.controller is None or self._state_label() != "active":
            return False, f"not active (state {self._state_label()}): activate first"
        if self.controller.safety.estopped:
            return False, "e-stopped: rearm first"
        if not self.running:
            self._restart_episode()
            self.running = True
        return True, "commanding"

    def _srv_stop(self) -> tuple[bool, str]:
        self._hold_and_stop()
        return True, "stopped: held at the measured position"

    def _srv_estop(self) -> tuple[bool, str]:
        if self.controller is None:
            return False, f"nothing to stop (state {self._state_label()})"
        self.controller.safety.estop()
        return True, "e-stop latched: no command until rearm"

    def _srv_rearm(self) -> tuple[bool, str]:
        if self.controller is None:
            return False, f"not configured (state {self._state_label()})"
        self.controller.safety.rearm()
        self.fault = ""
        self._restart_episode()
        return True, "rearmed: commanding from the measured position"

    def _srv_reset_episode(self) -> tuple[bool, str]:
        if self.controller is None:
            return False, f"not configured (state {self._state_label()})"
        self._restart_episode()
        return True, "new episode"

    def _state_label(self) -> str:
        state = getattr(self, "_state_machine", None)
        return state.current_state[1] if state is not None else "unknown"

    # ------------------------------------------------------------------ diagnostics
    def status(self) -> dict[str, str]:
        """What /diagnostics reports, as strings (also the deploy command's summary)."""
        values = {"state": self._state_label(), "running": str(self.running),
                  "commands_sent": str(self.sent)}
        if self.latencies:
            ms = 1000 * np.asarray(self.latencies)
            values |= {"decision_latency_ms_p50": f"{np.percentile(ms, 50):.2f}",
                       "decision_latency_ms_p99": f"{np.percentile(ms, 99):.2f}"}
        c = self.controller
        if c is not None and self.engine is not None:
            values |= {"engine_device": str(self.engine.device),
                       "engine_backend": self.engine.backend,
                       "inpaint": str(self.engine.inpaint),
                       "estopped": str(c.safety.estopped),
                       "decisions": str(c.stats["decisions"])}
            now = self.now()
            ages = {k: now - s[0] for k in c.obs.keys if (s := c.obs.latest(k)) is not None}
            values |= {f"observation_age_ms.{k}": f"{1000 * a:.1f}" for k, a in ages.items()}
            if ages:
                values["observation_age_ms_max"] = f"{1000 * max(ages.values()):.1f}"
            values |= {f"safety.{k}": str(v) for k, v in c.safety.interventions.items()}
            values |= {f"controller.{k}": str(v) for k, v in c.stats.items()
                       if k != "decisions"}
        values |= {f"malformed.{k}": str(v) for k, v in self.malformed.items()}
        return values

    def _level(self) -> tuple[bytes, str]:
        if self.error or self.fault:
            return DiagnosticStatus.ERROR, self.error or self.fault
        c = self.controller
        if c is not None and c.safety.estopped:
            return DiagnosticStatus.ERROR, "e-stopped"
        if c is not None and self.running and c.obs.stale(self.now(), self.robot.max_obs_age):
            stale = c.obs.stale(self.now(), self.robot.max_obs_age)
            return DiagnosticStatus.WARN, f"holding: stale or missing {', '.join(stale)}"
        return DiagnosticStatus.OK, "commanding" if self.running else self._state_label()

    def _publish_diagnostics(self) -> None:
        level, message = self._level()
        status = DiagnosticStatus(level=level, name=f"{self.get_name()}: controller",
                                  message=message, hardware_id=self.spec.name,
                                  values=[KeyValue(key=k, value=v)
                                          for k, v in self.status().items()])
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics.publish(msg)
