"""The safety filter on a fake clock: holds on stale observations, never emits a non-finite or
out-of-limit command, latches the e-stop until re-armed."""

import numpy as np
import pytest

from robopolicy.errors import ConfigError
from robopolicy.real.controller import ManualClock
from robopolicy.real.safety import SafetyConfig, SafetyFilter
from robopolicy.sim.robot import load_robot

DT = 0.01  # a 100 Hz command stream


@pytest.fixture
def panda():
    return load_robot("panda")


def make(robot, **config):
    clock = ManualClock()
    return SafetyFilter(robot, DT, SafetyConfig(**config), clock=clock), clock


def target(robot, arm, gripper=0.5):
    return np.append(arm, gripper)


def test_stale_observations_hold_then_send_nothing_until_fresh_again(panda):
    safety, clock = make(panda, max_obs_age=0.05)
    home = np.asarray(panda.home)
    for _ in range(10):  # fresh measurements: commands flow
        assert safety.filter(target(panda, home + 0.1), home, clock.now) is not None
        clock.now += DT
    measured_at = clock.now - DT  # the sensor stops here
    sent = []
    for _ in range(20):
        sent.append(safety.filter(target(panda, home + 0.1), home, measured_at))
        clock.now += DT
    first_none = next(i for i, c in enumerate(sent) if c is None)
    np.testing.assert_allclose(sent[first_none - 1][:-1], home)  # the hold: measured position
    assert all(c is None for c in sent[first_none:])
    assert safety.interventions["stale_observation"] >= 1
    # fresh measurements again: commanding restarts from the measured position
    command = safety.filter(target(panda, home + 0.1), home, clock.now)
    assert command is not None
    assert np.all(np.abs(command[:-1] - home) <= panda.max_velocity * DT + 1e-9)


def test_watchdog_holds_within_two_ticks_of_the_age_limit(panda):
    """Measured at t = 0; the first tick whose age passes the limit holds."""
    safety, clock = make(panda, max_obs_age=0.05)
    home = np.asarray(panda.home)
    ticks = []
    for tick in range(12):
        clock.now = tick * DT
        ticks.append(safety.filter(target(panda, home), home, 0.0))
    hold_tick = next(t for t, c in enumerate(ticks) if t * DT > 0.05)
    assert hold_tick <= 0.05 / DT + 2
    assert ticks[hold_tick] is not None and all(c is None for c in ticks[hold_tick + 1:])


def random_chunks(rng, robot, n):
    """Targets a broken policy could emit: wild positions, NaN, Inf, wrong gripper values."""
    for _ in range(n):
        chunk = rng.uniform(robot.lower - 1.0, robot.upper + 1.0, size=(8, robot.dof))
        chunk = np.concatenate([chunk, rng.uniform(-0.5, 1.5, size=(8, 1))], axis=1)
        kind = rng.integers(5)
        if kind == 0:
            chunk[rng.integers(8), rng.integers(robot.dof + 1)] = np.nan
        elif kind == 1:
            chunk[rng.integers(8), rng.integers(robot.dof + 1)] = np.inf * rng.choice([-1, 1])
        elif kind == 2:  # a smooth chunk near the current pose: the normal case
            chunk[:, :-1] = np.asarray(robot.home) + np.cumsum(
                rng.normal(0, 0.02, size=(8, robot.dof)), axis=0)
        yield chunk


@pytest.mark.parametrize("robot_name", ["panda", "ur5e"])
def test_no_emitted_command_is_non_finite_or_outside_the_limits(robot_name):
    """Property test over random chunks: every command sent is finite and inside position
    (with margins), velocity and acceleration limits, whatever the policy emitted, with
    the measured position lagging the command like a real servo."""
    robot = load_robot(robot_name)
    safety, clock = make(robot, position_margin=0.05)
    rng = np.random.default_rng(0)
    measured = np.asarray(robot.home, dtype=float)
    sent = []
    for chunk in random_chunks(rng, robot, 300):
        for action in chunk:
            command = safety.filter(action, measured, clock.now)
            assert command is not None
            sent.append(command)
            measured = measured + 0.7 * (command[:-1] - measured)  # the servo lags
            clock.now += DT
    sent = np.asarray(sent)  # (ticks, dof + 1)
    arm = sent[:, :-1]
    assert np.isfinite(sent).all()
    assert (arm >= robot.lower + 0.05 - 1e-12).all() and (arm <= robot.upper - 0.05 + 1e-12).all()
    assert ((sent[:, -1] >= 0) & (sent[:, -1] <= 1)).all()
    velocity = np.diff(np.vstack([robot.home, arm]), axis=0) / DT  # from the start pose
    assert (np.abs(velocity) <= robot.max_velocity * (1 + 1e-9)).all()
    acceleration = np.diff(np.vstack([np.zeros(robot.dof), velocity]), axis=0) / DT
    assert (np.abs(acceleration) <= robot.max_acceleration * (1 + 1e-6)).all()
    for reason in ("non_finite", "position_limit", "max_step", "velocity_acceleration",
                   "gripper_range"):
        assert safety.interventions[reason] > 0, reason


def test_a_safe_target_passes_unchanged(panda):
    safety, clock = make(panda)
    home = np.asarray(panda.home)
    goal = target(panda, home + 0.0003, gripper=0.3)  # within one tick's accelerations
    command = safety.filter(goal, home, clock.now)
    np.testing.assert_allclose(command, goal)
    assert sum(safety.interventions.values()) == 0


def test_max_step_bounds_the_lead_over_the_measured_position(panda):
    """A blocked joint: the measured position stays put, the command never leads it by more
    than max_step, however long the policy keeps pulling."""
    safety, clock = make(panda, max_step=0.1)
    home = np.asarray(panda.home)
    for _ in range(200):
        command = safety.filter(target(panda, home + 0.5), home, clock.now)
        clock.now += DT
    assert np.all(command[:-1] - home <= 0.1 + 1e-12)
    assert np.allclose(command[:-1], home + 0.1)


def test_estop_latches_within_one_tick_and_survives_new_chunks_until_rearmed(panda):
    safety, clock = make(panda)
    home = np.asarray(panda.home)
    assert safety.filter(target(panda, home), home, clock.now) is not None
    safety.estop()
    clock.now += DT
    held = safety.filter(target(panda, home + 0.05), home, clock.now)  # the next tick
    np.testing.assert_allclose(held[:-1], home)  # one hold at the measured position
    for _ in range(50):  # new chunks keep coming: nothing is sent
        clock.now += DT
        assert safety.filter(target(panda, home + 0.05), home, clock.now) is None
    safety.estop()  # pressing again while latched counts once
    assert safety.interventions["estop"] == 1
    safety.rearm()
    clock.now += DT
    assert safety.filter(target(panda, home + 0.05), home, clock.now) is not None


def test_workspace_box_rejects_targets_whose_end_effector_leaves_it(panda):
    from robopolicy.sim.ik import ArmIK

    home = np.asarray(panda.home)
    pos = ArmIK(panda, DT).fk(home)[0]
    safety, clock = make(panda, workspace=[list(pos - 0.05), list(pos + 0.05)])
    assert safety.filter(target(panda, home), home, clock.now) is not None
    away = home.copy()
    away[1] += 0.5  # the shoulder swings the hand ~ 0.3 m out of the box
    command = safety.filter(target(panda, away), home, clock.now + DT)
    np.testing.assert_allclose(command[:-1], home)  # rejected: stays at the last command
    assert safety.interventions["workspace"] == 1


@pytest.mark.parametrize("bad, match", [
    ({"position_margin": -0.1}, "position_margin"),
    ({"velocity_scale": 1.5}, "velocity_scale"),
    ({"max_obs_age": 0}, "max_step and max_obs_age"),
    ({"workspace": [[0, 0, 0], [1, 1]]}, "workspace"),
])
def test_bad_safety_config_is_one_line(panda, bad, match):
    with pytest.raises(ConfigError, match=match):
        SafetyFilter(panda, DT, SafetyConfig(**bad))
