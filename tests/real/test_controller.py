"""The controller core on a fake clock: observation windows, timed chunks with latency
matching, interpolation, ensembling, decisions started before the queue runs dry, and the
safety filter behind every command."""

import numpy as np
import pytest
import torch

from robopolicy.engine import InferenceEngine
from robopolicy.policies import MODELS, FlowConfig
from robopolicy.real.controller import (
    ChunkScheduler,
    Controller,
    ManualClock,
    ObservationBuffer,
    Plan,
    engine_policy,
    inpaint_weights,
)
from robopolicy.real.safety import SafetyConfig, SafetyFilter
from robopolicy.sim.robot import load_robot

PERIOD = 0.05  # the policy's 20 Hz
COMMAND = 0.01  # a 100 Hz command stream


def test_window_takes_the_sample_nearest_each_slot_and_pads_the_start():
    buf = ObservationBuffer(["q"], n_obs_steps=3, period=PERIOD)
    buf.update("q", [0.0], 0.0)
    np.testing.assert_array_equal(buf.window(0.0)["q"][:, 0], [0.0, 0.0, 0.0])  # padded
    for k in range(1, 11):  # 100 Hz samples
        buf.update("q", [k], k * 0.01)
    assert buf.window_time() == pytest.approx(0.10)
    # slots at 0.00, 0.05, 0.10 -> samples 0, 5, 10
    np.testing.assert_array_equal(buf.window(0.10)["q"][:, 0], [0, 5, 10])
    np.testing.assert_array_equal(buf.window(0.07)["q"][:, 0], [0, 2, 7])
    # a 20 Hz loop whose stamps run up to 4 ms late still gets one sample per period
    late = ObservationBuffer(["q"], n_obs_steps=2, period=PERIOD)
    for k, jitter in enumerate([0.0, 0.004, 0.004, 0.0]):  # tick 2 late, tick 3 on time
        late.update("q", [k], k * PERIOD + jitter)
    np.testing.assert_array_equal(late.window(late.window_time())["q"][:, 0], [2, 3])
    assert buf.stale(0.12, max_age=0.05) == [] and buf.stale(0.2, max_age=0.05) == ["q"]


def test_latency_matching_drops_the_actions_whose_time_has_passed():
    chunk = np.arange(8.0)[:, None]  # action j belongs to obs_time + j * PERIOD
    matched = ChunkScheduler(PERIOD)
    matched.add(chunk, obs_time=1.0, now=1.15)  # arrived 150 ms late
    assert matched.dropped == 3
    assert matched.action_at(1.15)[0] == pytest.approx(3.0)
    stale = ChunkScheduler(PERIOD, latency_matching=False)
    stale.add(chunk, obs_time=1.0, now=1.15)
    assert stale.dropped == 0 and stale.action_at(1.15)[0] == 0.0  # executes the old start


def test_actions_are_interpolated_to_the_command_rate_and_run_dry_after_the_last():
    s = ChunkScheduler(PERIOD)
    s.add(np.array([[0.0], [1.0], [3.0]]), obs_time=0.0, now=0.0)
    got = [s.action_at(t)[0] for t in np.arange(0, 0.1 + 1e-9, COMMAND)]
    np.testing.assert_allclose(got, [0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.4, 1.8, 2.2, 2.6, 3.0])
    assert s.remaining(0.06) == pytest.approx(0.04)
    assert s.action_at(0.11) is None


def test_decisions_are_timed_to_the_executed_window_and_the_rest_is_slack():
    s = ChunkScheduler(PERIOD, n_action_steps=2)
    s.add(np.arange(4.0)[:, None], obs_time=0.0, now=0.0)
    assert s.remaining(0.0) == pytest.approx(0.05)  # Ta = 2: the window ends at 0.05
    assert s.action_at(0.10)[0] == pytest.approx(2.0)  # a late next chunk: the slack runs
    assert s.action_at(0.16) is None


def test_temporal_ensembling_weights_older_predictions_more():
    s = ChunkScheduler(PERIOD, ensemble=0.5)
    s.add(np.zeros((4, 1)), obs_time=0.0, now=0.0)
    s.add(np.ones((4, 1)), obs_time=0.05, now=0.05)  # overlaps slots 1..3
    w = np.exp(-0.5)  # the second prediction's weight; the first's is 1
    assert s.action_at(0.05)[0] == pytest.approx(w / (1 + w))
    assert s.action_at(0.20)[0] == pytest.approx(1.0)  # only the new chunk predicts slot 4


def test_the_plan_is_what_the_schedule_would_command_and_nan_outside_it():
    s = ChunkScheduler(PERIOD)
    s.add(np.arange(4.0)[:, None] * [1.0, -1.0], obs_time=0.0, now=0.0)
    plan = s.plan(arrival=0.07)
    got = plan.at(np.array([-0.01, 0.025, 0.15, 0.2]))
    assert np.isnan(got[0]).all() and np.isnan(got[3]).all()  # before and after the plan
    np.testing.assert_allclose(got[1:3], [[0.5, -0.5], [3.0, -3.0]])
    assert plan.arrival == 0.07


def test_inpaint_weights_freeze_what_runs_before_arrival_then_fall_to_the_plans_end():
    times = PERIOD * np.arange(10)
    known = np.arange(10) < 7  # the plan reaches the 7th action
    w = inpaint_weights(times, known, arrival=0.12)
    np.testing.assert_array_equal(w[:3], 1.0)  # 0, 50 and 100 ms: commanded before arrival
    assert 1 > w[3] > w[4] > w[5] > w[6] > 0  # RTC's exponential decay over the overlap
    np.testing.assert_array_equal(w[7:], 0.0)
    assert not inpaint_weights(times, np.zeros(10, bool), arrival=1.0).any()


def test_an_inpainting_policy_continues_the_plan_through_the_chunks_arrival():
    """engine_policy hands the plan to an inpainting engine: the new chunk's actions up to
    the expected arrival are the planned ones, so the switch to it is seamless."""
    torch.manual_seed(0)
    config = FlowConfig(shapes={"joint_pos": [7], "action": [8]}, horizon=8, n_obs_steps=2,
                        n_action_steps=4, num_inference_steps=4, backbone="mlp",
                        backbone_kwargs={"hidden_dim": 32, "n_layers": 1})
    model = MODELS["flow"](config)
    model.fit_normalizer({k: {"min": -np.ones(d), "max": np.ones(d)}
                          for k, d in (("joint_pos", 7), ("action", 8))})
    policy = engine_policy(InferenceEngine(model.eval(), inpaint=True), PERIOD)
    window = {"joint_pos": np.zeros((2, 7), np.float32)}
    obs_time = 1.0
    times = obs_time + PERIOD * np.arange(-1, 6)  # the old chunk, planned to 1.25 s
    planned = np.random.default_rng(0).uniform(-0.5, 0.5, (len(times), 8))
    plan = Plan(times, planned, arrival=obs_time + 0.12)
    chunk = policy(window, obs_time, plan)  # (T - To + 1, Da) from the observation time on
    assert chunk.shape == (7, 8)
    np.testing.assert_allclose(chunk[:3], planned[1:4], atol=1e-5)  # 1.0, 1.05, 1.1 s
    assert np.abs(chunk[5:] - planned[6:7]).max() > 1e-3  # past the plan: the model's own
    free = engine_policy(InferenceEngine(model), PERIOD)(window, obs_time, plan)
    assert np.abs(free[:3] - planned[1:4]).max() > 1e-2  # without inpainting it is not


def make_controller(clock, delay, latency_matching=True, max_age=0.1):
    """A policy whose action for time t is t itself on every joint: what it commands at a
    time tells which prediction the scheduler picked for it."""
    robot = load_robot("panda")
    calls = []

    def policy(window, obs_time, plan):
        t_obs = window["clock"][-1, 0]
        calls.append(t_obs)
        times = t_obs + PERIOD * np.arange(8)  # (8,)
        return np.concatenate([np.asarray(robot.home)[None] + 0.01 * times[:, None],
                               np.full((8, 1), 0.5)], axis=1)

    safety = SafetyFilter(robot, COMMAND, SafetyConfig(max_obs_age=max_age), clock=clock)
    controller = Controller(policy, obs_keys=["clock", "joint_pos"], n_obs_steps=2,
                            period=PERIOD, command_period=COMMAND, safety=safety, clock=clock,
                            threaded=False, delay=delay, latency_matching=latency_matching,
                            max_obs_age=max_age)
    return controller, calls, robot


def drive(controller, clock, robot, seconds, sensor_until=np.inf):
    """Tick at 100 Hz with fresh samples each tick (until ``sensor_until``)."""
    commands = []
    while clock.now < seconds - 1e-9:
        if clock.now <= sensor_until:
            controller.observe("clock", [clock.now], clock.now)
            controller.observe("joint_pos", np.asarray(robot.home), clock.now)
        commands.append((clock.now, controller.tick()))
        clock.now = round(clock.now + COMMAND, 6)
    return commands


@pytest.mark.parametrize("delay", [0.0, 0.15])
def test_decisions_start_before_the_queue_runs_dry_and_actions_run_on_time(delay):
    clock = ManualClock()
    controller, calls, robot = make_controller(clock, delay)
    commands = drive(controller, clock, robot, 2.0)
    # after the first decision arrives the schedule never runs dry
    assert controller.stats["ran_dry"] == round(delay / COMMAND)  # the first wait only
    # on time: the target commanded at t is the one the policy planned for t (the filter
    # passes these slow ramps unchanged)
    for t, command in commands[len(commands) // 2:]:
        np.testing.assert_allclose(command[:-1], np.asarray(robot.home) + 0.01 * t, atol=1e-9)
    # a decision each time the schedule (7 periods past its observation) has one latency
    # and one command period left: far fewer than ticks
    assert 2.0 / (7 * PERIOD) <= len(calls) <= 2.0 / (7 * PERIOD - delay - 2 * COMMAND) + 1


def test_without_latency_matching_the_commands_lag_by_the_delay():
    clock = ManualClock()
    controller, _, robot = make_controller(clock, 0.15, latency_matching=False)
    commands = drive(controller, clock, robot, 2.0)
    lags = [t - (command[0] - robot.home[0]) / 0.01 for t, command in commands[100:]]
    assert np.median(lags) >= 0.1  # it executes what was planned for ~150 ms ago


def test_stale_sensors_stop_new_decisions_and_hold_within_two_ticks():
    clock = ManualClock()
    controller, calls, robot = make_controller(clock, 0.0, max_age=0.05)
    commands = drive(controller, clock, robot, 1.0, sensor_until=0.5)
    first_none = next(i for i, (_, c) in enumerate(commands) if c is None)
    hold_time, hold = commands[first_none - 1]
    np.testing.assert_allclose(hold[:-1], robot.home)  # the last measured position
    assert 0.5 + 0.05 - 1e-9 <= hold_time <= 0.5 + 0.05 + 2 * COMMAND  # within two ticks
    assert all(c is None for _, c in commands[first_none:])  # then nothing
    assert all(t <= 0.5 + 0.05 + 1e-9 for t in calls)  # no decision on stale data
    assert any(k.startswith("skipped_stale") for k in controller.stats)
