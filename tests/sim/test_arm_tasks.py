"""The native arm tasks: robot tables, the composed scene, joint tracking, failures, experts."""

from __future__ import annotations

import json

import mujoco
import numpy as np
import pytest
import yaml

from robopolicy.cli import main
from robopolicy.data.store import EpisodeStore
from robopolicy.data.validate import validate_store
from robopolicy.errors import ConfigError
from robopolicy.sim.arm_scene import arm_spec
from robopolicy.sim.core import SimError, make_env, make_expert
from robopolicy.sim.evaluate import evaluate
from robopolicy.sim.ik import ArmIK, quat_error
from robopolicy.sim.robot import ROBOTS_DIR, limit_command, load_robot, robot_names
from robopolicy.sim.vector import VectorEnv

ARM_TASKS = ["panda_reach", "panda_lift", "panda_place", "ur5e_reach"]
PANDA_LIFT_OBS = {"joint_pos", "joint_vel", "gripper_pos", "eef_pos", "eef_quat", "object_pos",
                  "object_quat"}


def run_expert(task: str, seed: int, action_noise: float = 0.0, timing_jitter: float = 0.0,
               **overrides) -> tuple[bool, int, str]:
    """One expert episode: (success, steps, failure reason)."""
    env = make_env(task, **overrides)
    expert = make_expert(task, env.action_space, seed=seed, action_noise=action_noise,
                         timing_jitter=timing_jitter)
    obs, _ = env.reset(seed=seed)
    expert.reset(obs)
    for t in range(1, env.max_episode_steps + 1):
        obs, _, terminated, truncated, info = env.step(expert.act(obs))
        if terminated or truncated:
            return info["success"], t, info["failure"]
    raise AssertionError("episode neither terminated nor truncated")


@pytest.mark.parametrize("name", robot_names())
def test_robot_table_matches_the_mjcf(name):
    robot = load_robot(name)
    model = arm_spec(robot).compile()
    for j, joint in enumerate(robot.joints):
        np.testing.assert_allclose(model.joint(joint).range,
                                   [robot.lower[j], robot.upper[j]], atol=1e-4, err_msg=joint)
        servo = model.actuator(joint)
        np.testing.assert_allclose(servo.forcerange, [-robot.effort[j], robot.effort[j]])
        np.testing.assert_allclose(servo.ctrlrange, model.joint(joint).range)
    for joint in robot.gripper.joints:
        assert model.joint(joint).type in (mujoco.mjtJoint.mjJNT_HINGE,
                                           mujoco.mjtJoint.mjJNT_SLIDE)
    assert model.site(robot.ee_site).id >= 0 and model.camera(robot.wrist_camera).id >= 0
    assert robot.dof == {"panda": 7, "ur5e": 6}[name]


def test_panda_table_has_the_published_limits():
    panda = load_robot("panda")
    assert panda.velocity == [2.175] * 4 + [2.61] * 3
    assert panda.acceleration == [15.0, 7.5, 10.0, 12.5, 15.0, 20.0, 20.0]
    assert panda.effort == [87.0] * 4 + [12.0] * 3
    assert panda.position_upper[3] == -0.0698 and panda.position_lower[5] == -0.0175


@pytest.mark.parametrize(("edit", "message"), [
    ({"speed": 1.0}, "unknown config key"),
    ({"velocity": [1.0, 2.0]}, "velocity has 2 values for 7 joints"),
    ({"home": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]}, "outside the position limits"),
    ({"effort": [87, 87, 87, 87, 12, 12, 0]}, "effort limits must be positive"),
    ({"inertials": {"link5": {"mass": 1.0, "pos": [0.0, 0.0], "inertia": [0.1] * 3}}},
     "inertials.link5 needs mass >= 0, pos"),
    ({"inertials": {"link5": {"mass": 1.0, "pos": [0.0] * 3}}}, "inertia"),
])
def test_bad_robot_tables_are_one_line_errors(tmp_path, edit, message):
    values = yaml.safe_load((ROBOTS_DIR / "panda.yaml").read_text())
    values.update(edit)
    path = tmp_path / "robot.yaml"
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(ConfigError, match=message) as err:
        load_robot(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    with pytest.raises(ConfigError, match="unknown robot 'nope'; bundled: panda, ur5e"):
        load_robot("nope")


def test_limit_command_keeps_velocity_and_acceleration_limits_and_does_not_overshoot():
    panda = load_robot("panda")
    dt = 0.05
    command, velocity = np.asarray(panda.home), np.zeros(7)
    target = np.asarray(panda.home) + np.array([1.5, -0.8, 2.0, 1.0, 2.5, -2.0, 2.0])
    target = np.clip(target, panda.lower, panda.upper)
    trajectory = []
    for _ in range(80):
        previous = velocity
        command, velocity = limit_command(target, command, velocity, dt, panda)
        trajectory.append(command)
        assert (np.abs(velocity) <= panda.max_velocity + 1e-9).all()
        assert (np.abs(velocity - previous) <= panda.max_acceleration * dt + 1e-9).all()
        assert ((command >= panda.lower) & (command <= panda.upper)).all()
    np.testing.assert_allclose(command, target, atol=1e-9)  # arrives and stops there
    moved = np.asarray(trajectory) - np.asarray(panda.home)
    overshoot = (moved / (target - np.asarray(panda.home))).max()
    # a velocity-then-acceleration clamp alone overshoots this move by 30% (joint 2)
    assert overshoot < 1.005, overshoot


def test_joint_targets_are_tracked_at_the_task_rate():
    """A smooth 20 Hz joint trajectory (every joint, 0.3 rad at 0.5 Hz, about half the
    velocity limit) is followed within 0.04 rad (the servos' 32 ms lag), and a held target
    is reached within 2 mrad in half a second."""
    env = make_env("panda_reach")
    obs, _ = env.reset(seed=0)
    start = obs["joint_pos"].astype(float)
    errors = []
    for k in range(60):
        target = start + 0.3 * np.sin(np.pi * k / 20) * np.ones(7)
        obs, _, _, _, info = env.step(np.append(target, 1.0))
        assert not info["failure"], info["failure"]
        errors.append(np.abs(obs["joint_pos"] - env._command).max())
    assert max(errors) < 0.04, max(errors)
    for _ in range(10):
        obs, *_ = env.step(np.append(target, 1.0))
    assert np.abs(obs["joint_pos"] - target).max() < 2e-3


def test_fast_commands_inside_the_limits_keep_joint_speeds_inside_them():
    """Far joint targets (home +- 0.6 rad, a new one every 8 steps) make every joint run at
    its velocity limit with the largest accelerations the table allows. Away from contacts,
    the servos keep every joint within 5% of its speed limit: with robosuite's placeholder
    inertias (what the table's ``inertials`` replace) the wrist reached 1.9x its limit."""
    env = make_env("panda_lift")
    env.model.opt.disableflags |= mujoco.mjtDisableBit.mjDSBL_CONTACT  # free space only
    rng = np.random.default_rng(0)
    home = np.asarray(env.arm.home)
    worst = np.zeros(7)
    for episode in range(4):
        env.reset(seed=episode)
        for k in range(64):
            if k % 8 == 0:
                target = home + rng.uniform(-0.6, 0.6, 7)
            obs, _, _, _, info = env.step(np.append(target, 1.0))
            assert not info["failure"], info["failure"]
            worst = np.maximum(worst, np.abs(obs["joint_vel"]) / env.arm.max_velocity)
    assert worst.max() < 1.05, worst
    assert worst.min() > 0.9, worst  # every joint was driven to its limit


def test_robot_table_sets_the_mass_properties(tmp_path):
    env = make_env("panda_reach")
    for body, inertial in env.arm.inertials.items():
        assert env.model.body(body).mass[0] == pytest.approx(inertial.mass), body
        np.testing.assert_allclose(env.model.body(body).ipos, inertial.pos, err_msg=body)
    principal = np.sort(env.model.body("link5").inertia)  # from the full tensor
    np.testing.assert_allclose(principal, [0.00803, 0.02885, 0.03676], atol=1e-5)
    table = yaml.safe_load((ROBOTS_DIR / "panda.yaml").read_text())
    table["inertials"] = {"no_such_body": {"mass": 1.0, "pos": [0.0] * 3, "inertia": [1.0] * 3}}
    path = tmp_path / "robot.yaml"
    path.write_text(yaml.safe_dump(table))
    with pytest.raises(ConfigError, match="inertials names body 'no_such_body'"):
        arm_spec(load_robot(path))


def test_gravity_is_compensated():
    env = make_env("panda_lift")
    obs, _ = env.reset(seed=1)
    start = obs["joint_pos"].copy()
    for _ in range(40):  # 2 s holding the start pose
        obs, *_ = env.step(np.append(start, 1.0))
    assert np.abs(obs["joint_pos"] - start).max() < 1e-3
    assert np.abs(obs["joint_vel"]).max() < 1e-2


def test_observations_are_named_and_match_forward_kinematics():
    env = make_env("panda_lift")
    obs, _ = env.reset(seed=3)
    assert set(obs) == PANDA_LIFT_OBS
    assert env.action_space.shape == (8,) and env.robot == "panda" and env.fps == 20.0
    np.testing.assert_allclose(env.action_space.low[:7], load_robot("panda").lower, rtol=1e-6)
    ik = ArmIK(load_robot("panda"), 0.05)
    pos, quat = ik.fk(obs["joint_pos"].astype(float))
    np.testing.assert_allclose(obs["eef_pos"], pos, atol=1e-5)
    assert quat_error(obs["eef_quat"], quat) < 1e-3
    assert obs["eef_quat"] @ env.home_quat > 0  # the sign nearest the home orientation
    assert obs["gripper_pos"][0] == pytest.approx(1.0)  # open at the start
    assert abs(obs["object_pos"][2] - 0.02) < 1e-3  # the cube rests on the table
    images = make_env("panda_lift", images=True, image_size=32)
    try:
        obs, _ = images.reset(seed=3)
        assert set(obs) == PANDA_LIFT_OBS | {"agentview_image", "wrist_image"}
        assert not np.array_equal(obs["agentview_image"], obs["wrist_image"])
    finally:
        images.close()


def test_self_collision_ends_the_episode_as_a_failure():
    env = make_env("panda_reach")
    env.reset(seed=0)
    folded = np.asarray(env.arm.home).copy()
    folded[5] = 0.0  # joint 6 at its lower limit folds the hand back onto the forearm
    for _ in range(60):
        obs, reward, terminated, truncated, info = env.step(np.append(folded, 1.0))
        if terminated:
            break
    assert info["failure"] == "self_collision: link5_collision / link7_collision"
    assert terminated and not info["success"] and info["reward_terms"]["failure"] == -1.0


def test_pushed_past_a_joint_limit_is_a_failure():
    env = make_env("panda_reach")
    env.reset(seed=0)
    at_limit = np.asarray(env.arm.home).copy()
    at_limit[0] = env.arm.upper[0]
    for t in range(120):
        # an outside force far above the servo's 87 N m, once the joint sits at its limit
        env.data.qfrc_applied[env._dq[0]] = 300.0 if t > 50 else 0.0
        obs, _, terminated, _, info = env.step(np.append(at_limit, 1.0))
        if terminated:
            break
    assert info["failure"].startswith("joint_position_limit: joint1 at 2.9"), info["failure"]
    assert t > 50  # commanding the limit itself is no violation


def test_nan_physics_is_a_failure_not_a_crash():
    env = make_env("panda_lift")
    env.reset(seed=0)
    env.data.qvel[:] = np.nan
    obs, _, terminated, _, info = env.step(np.append(env.arm.home, 1.0))
    assert terminated and info["failure"].startswith("physics_unstable")
    assert all(np.isfinite(v).all() for v in obs.values())
    obs, _ = env.reset(seed=0)  # and the env goes on
    _, _, terminated, _, info = env.step(np.append(obs["joint_pos"], 1.0))
    assert not terminated and info["failure"] == ""


def test_unknown_control_and_robot_are_errors():
    with pytest.raises(SimError, match="unknown control 'torque'"):
        make_env("panda_lift", control="torque")
    with pytest.raises(ConfigError, match="unknown robot"):
        make_env("panda_lift", robot="nope")


@pytest.mark.parametrize("task", ARM_TASKS)
def test_expert_succeeds_without_noise(task):
    results = [run_expert(task, seed) for seed in range(8)]
    assert all(ok for ok, _, _ in results), results


@pytest.mark.parametrize("task", ARM_TASKS)
def test_expert_succeeds_with_noise_and_jitter(task):
    noisy = [run_expert(task, seed, action_noise=0.01, timing_jitter=0.2) for seed in range(8)]
    assert all(ok for ok, _, _ in noisy), noisy
    clean = [run_expert(task, seed)[1] for seed in range(8)]
    assert sum(t != c for (_, t, _), c in zip(noisy, clean, strict=True)) >= 4


def test_expert_drives_delta_joint_control_too():
    env = make_env("panda_lift", control="joint_delta")
    assert (env.action_space.low[:7] == -1).all() and (env.action_space.high[:7] == 1).all()
    assert all(run_expert("panda_lift", seed, control="joint_delta")[0] for seed in range(3))
    obs, _ = env.reset(seed=0)
    start = obs["joint_pos"].copy()
    for _ in range(5):
        obs, *_ = env.step(np.append(np.zeros(7), 1.0))  # zero delta: stay put
    assert np.abs(obs["joint_pos"] - start).max() < 2e-3


def lowest_point(env, geom: int) -> float:
    """Height of a mesh or box geom's lowest corner above the table top (z = 0)."""
    m, d = env.model, env.data
    if m.geom_type[geom] == mujoco.mjtGeom.mjGEOM_MESH:
        start, count = m.mesh_vertadr[m.geom_dataid[geom]], m.mesh_vertnum[m.geom_dataid[geom]]
        local = m.mesh_vert[start:start + count]  # (V, 3)
    else:
        local = m.geom_size[geom] * np.array(np.meshgrid(*[[-1, 1]] * 3)).reshape(3, -1).T
    world = local @ d.geom_xmat[geom].reshape(3, 3).T + d.geom_xpos[geom]  # (V, 3)
    return float(world[:, 2].min())


def test_lift_expert_grips_with_the_fingertips_clear_of_the_table():
    """A policy copies the expert's grasp height with an error of millimetres: the expert
    grips high enough on the cube that its fingertips stay over 1 cm above the table (they
    were 6 mm above it when it gripped below the cube's centre)."""
    env = make_env("panda_lift")
    fingers = [g for g in range(env.model.ngeom) if env._gripper_geom[g]
               and env.model.geom_contype[g] | env.model.geom_conaffinity[g]]
    clearance = np.inf
    for seed in range(3):
        expert = make_expert("panda_lift", env.action_space, seed=seed)
        obs, _ = env.reset(seed=seed)
        expert.reset(obs)
        for _ in range(60):
            obs, _, terminated, _, info = env.step(expert.act(obs))
            clearance = min(clearance, *(lowest_point(env, g) for g in fingers))
            if terminated:
                break
        assert info["success"]
    assert 0.01 < clearance < 0.03, clearance


def test_lift_reward_terms_follow_the_grasp():
    env = make_env("panda_lift")
    expert = make_expert("panda_lift", env.action_space, seed=0)
    obs, _ = env.reset(seed=0)
    expert.reset(obs)
    terms = []
    while True:
        obs, _, terminated, truncated, info = env.step(expert.act(obs))
        terms.append(info["reward_terms"])
        if terminated or truncated:
            break
    assert info["success"] and set(terms[0]) == {"reach", "grasp", "lift", "success", "failure"}
    assert terms[0]["grasp"] == 0.0 and terms[-1]["grasp"] == 1.0
    assert terms[-1]["lift"] == 1.0 and terms[-1]["reach"] > 0.8
    assert terms[0]["reach"] < terms[-1]["reach"]


def test_place_needs_the_cube_released_inside_the_bin():
    env = make_env("panda_place")
    expert = make_expert("panda_place", env.action_space, seed=0)
    obs, _ = env.reset(seed=0)
    expert.reset(obs)
    carried = False
    while True:
        obs, _, terminated, truncated, info = env.step(expert.act(obs))
        carried |= info["reward_terms"]["grasp"] == 1.0 and obs["object_pos"][2] > 0.1
        if terminated or truncated:
            break
    assert info["success"] and carried
    offset = np.abs(obs["object_pos"][:2] - obs["bin_pos"][:2])
    assert (offset < 0.07).all() and obs["gripper_pos"][0] > 0.5


def test_second_arm_is_only_a_table():
    env = make_env("ur5e_reach")
    assert env.robot == "ur5e" and env.action_space.shape == (7,)
    assert env.observation_space["joint_pos"].shape == (6,)


class FoldingPolicy:
    """Commands the self-colliding fold of the self-collision test in every env."""

    def __init__(self, folded: np.ndarray, n_envs: int):
        self.action = np.tile(np.append(folded, 1.0), (n_envs, 1))

    def reset(self, mask):
        pass

    def act(self, obs):
        return self.action


def test_evaluation_counts_failures_by_kind():
    folded = np.asarray(load_robot("panda").home).copy()
    folded[5] = 0.0
    with VectorEnv("panda_reach", 1, autoreset=False, subprocess=False) as env:
        summary = evaluate(FoldingPolicy(folded, 1), "panda_reach", n_episodes=3, env=env,
                           progress=False)
    assert summary["failures"] == {"self_collision": 3} and summary["success_rate"] == 0.0
    assert max(summary["episode_lengths"]) < 40  # ended by the collision, not the time limit


def test_collect_cli_stores_joint_space_demos(tmp_path, capsys):
    out = tmp_path / "panda_lift.zarr"
    assert main(["sim", "collect", "--task", "panda_lift", "--episodes", "2", "--out",
                 str(out)]) == 0
    assert "expert success on panda_lift: 1.000 (2/2" in capsys.readouterr().out
    assert validate_store(out) == []
    with EpisodeStore.open(out) as store:
        assert store.info["robot"] == "panda" and store.fps == 20.0
        assert set(store.keys_with_role("obs")) == PANDA_LIFT_OBS
        actions = store.get_episode(0)["action"]  # (T, 8): joint targets and the gripper
        assert actions.shape[1] == 8
        panda = load_robot("panda")
        assert ((actions[:, :7] >= panda.lower) & (actions[:, :7] <= panda.upper)).all()
        assert actions[0, 7] == 1.0 and actions[-1, 7] == 0.0  # open, then closed on the cube


def test_sim_bench_compares_the_native_arm_with_robosuite(capsys):
    assert main(["sim", "bench", "--tasks", "panda_reach", "--quick"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["bench"] for r in lines] == ["sim.env_steps", "sim.paired_speedup",
                                           "sim.vector_scaling", "sim.vector_scaling"]
    paired = lines[1]
    assert (paired["task"], paired["reference"]) == ("panda_lift", "lift")
    assert paired["steps_per_s"] > 0 and paired["reference_steps_per_s"] > 0
    assert [(r["task"], r["envs_per_worker"]) for r in lines[2:]] == [("panda_lift", 1),
                                                                      ("panda_lift", 8)]
    assert all(r["steps_per_s_2_workers"] > 0 for r in lines[2:])
