"""An arm from its robot table, composed into a table-top scene with ``mujoco.MjSpec``.

The arm's MJCF and its gripper's come from robosuite's wheel. Composition, in one place:

- the arm's torque motors are replaced by position servos on every arm joint (force-limited
  to the table's ``effort``), the gripper keeps its own position actuators;
- every robot body gets ``gravcomp=1``: gravity is cancelled as a passive force, as the
  robot's own controller would, so the servos only track;
- servo gains are tuned per joint from the compiled model (:func:`tune_servos`).

The world frame is the robot's base frame; the table top is the plane z = 0. Observations
in world coordinates are therefore what forward kinematics on the real arm gives.
"""

from __future__ import annotations

from pathlib import Path

import mujoco
import numpy as np

from robopolicy.errors import ConfigError
from robopolicy.sim.robot import RobotSpec

# 5 ms physics steps (10 per 20 Hz control step), as mujoco_playground's Panda pick task:
# 2 ms (robosuite's) costs 2.5x the time for no change in the experts' success.
TIMESTEP = 0.005
# Servo bandwidth: a critically damped joint with natural frequency w settles a target step
# to 1 - (1 + wT) exp(-wT) of the way in T seconds. At 2 pi 10 Hz that is 82% of a step in
# one 20 Hz control period and a ramp is followed with a lag of 2/w = 32 ms; stiffer servos
# would saturate the wrist's 12 N m on every small step, softer ones lag a visible fraction
# of each move. tests/sim/test_arm_tasks.py measures the tracking error this gives.
SERVO_HZ = 10.0
# Convex hulls of the collision meshes keep at most this many vertices: robosuite's Panda link1
# hull has 6,260 and its collision tests dominated a physics step.
HULL_VERTICES = 64
TABLE_HALF = np.array([0.55, 0.6, 0.025])  # table box half-sizes, metres
TABLE_CENTRE_X = 0.35  # the robot stands on the table's back part, facing +x


def load_spec(path: Path) -> mujoco.MjSpec:
    """An MJCF as an MjSpec with absolute mesh paths, so it can be attached anywhere.

    A mesh name defined twice (robosuite's Robotiq MJCF does) keeps its first definition, as
    robosuite's own loader does; collision hulls are capped at ``HULL_VERTICES`` vertices.
    """
    spec = mujoco.MjSpec.from_file(str(path))
    seen = set()
    for mesh in list(spec.meshes):
        if mesh.name in seen:
            spec.delete(mesh)
            continue
        seen.add(mesh.name)
        mesh.file = str(path.parent / mesh.file)
        mesh.maxhullvert = HULL_VERTICES
    return spec


def arm_spec(robot: RobotSpec) -> mujoco.MjSpec:
    """The arm with its gripper mounted, position servos and gravity compensation; its base
    body sits at the origin of its own worldbody."""
    spec = load_spec(robot.mjcf_path(robot.mjcf))
    for actuator in list(spec.actuators):  # robosuite's torque motors
        spec.delete(actuator)
    gripper = load_spec(robot.mjcf_path(robot.gripper.mjcf))
    spec.body(robot.mount_body).add_frame().attach_body(gripper.body(robot.gripper.root_body),
                                                        "", "")
    _set_inertials(spec, robot)
    for name, effort, armature in zip(robot.joints, robot.effort, robot.armature, strict=True):
        spec.joint(name).armature = armature
        servo = spec.add_actuator(name=name, target=name,
                                  trntype=mujoco.mjtTrn.mjTRN_JOINT)
        servo.set_to_position(kp=1.0, kv=0.0)  # gains are set by tune_servos after compiling
        servo.ctrlrange = spec.joint(name).range
        servo.forcerange = [-effort, effort]
        servo.ctrllimited = servo.forcelimited = mujoco.mjtLimited.mjLIMITED_TRUE
    base = spec.body(robot.base_body)
    for body in base.find_all(mujoco.mjtObj.mjOBJ_BODY):
        body.gravcomp = 1.0
    # Cameras see the visual meshes only: collision hulls (group 0) and marker sites hidden.
    for geom in base.find_all(mujoco.mjtObj.mjOBJ_GEOM):
        if geom.group == 0:
            geom.rgba[3] = 0.0
    for site in base.find_all(mujoco.mjtObj.mjOBJ_SITE):
        site.rgba[3] = 0.0
    # The gripper's parts never touch each other usefully (Robotiq's linkage would rub and
    # chatter at every step, Panda's closed pads would press on each other): exclude them.
    root = spec.body(robot.gripper.root_body)
    for joint in root.find_all(mujoco.mjtObj.mjOBJ_JOINT):
        if robot.gripper.joint_armature > 0:
            joint.armature = robot.gripper.joint_armature
        if robot.gripper.joint_damping > 0:
            joint.damping = robot.gripper.joint_damping
    parts = [root, *root.find_all(mujoco.mjtObj.mjOBJ_BODY)]
    for i, first in enumerate(parts):
        for second in parts[i + 1:]:
            spec.add_exclude(bodyname1=first.name, bodyname2=second.name)
    return spec


def _set_inertials(spec: mujoco.MjSpec, robot: RobotSpec) -> None:
    """Replace the MJCF's mass properties with the robot table's (``inertials``)."""
    for name, inertial in robot.inertials.items():
        body = spec.body(name)
        if body is None:
            raise ConfigError(f"robot {robot.name}: inertials names body '{name}', which its "
                              "arm and gripper MJCF do not have")
        body.explicitinertial = True
        body.mass, body.ipos = inertial.mass, inertial.pos
        # MuJoCo takes one of the two forms: fullinertia NaN or diagonal zeros is unset.
        if len(inertial.inertia) == 3:
            body.inertia, body.iquat = inertial.inertia, [1, 0, 0, 0]
            body.fullinertia = [np.nan] * 6
        else:
            body.fullinertia, body.inertia = inertial.inertia, [0.0] * 3


def tune_servos(model: mujoco.MjModel, robot: RobotSpec, hz: float = SERVO_HZ) -> None:
    """Critically damped position servos: kp = I w^2, kv = 2 I w per joint, with I the joint's
    diagonal of the joint-space inertia (armature included) at the home pose, so every joint
    of every arm responds with the same bandwidth ``hz``."""
    data = mujoco.MjData(model)
    qpos_adr = [model.jnt_qposadr[model.joint(j).id] for j in robot.joints]
    dof_adr = [model.jnt_dofadr[model.joint(j).id] for j in robot.joints]
    data.qpos[qpos_adr] = robot.home
    mujoco.mj_forward(model, data)
    inertia = np.zeros((model.nv, model.nv))
    mujoco.mj_fullM(model, inertia, data.qM)
    omega = 2 * np.pi * hz
    for name, dof in zip(robot.joints, dof_adr, strict=True):
        i = model.actuator(name).id
        kp, kv = inertia[dof, dof] * omega**2, 2 * inertia[dof, dof] * omega
        model.actuator_gainprm[i, 0] = kp
        model.actuator_biasprm[i, 1:3] = -kp, -kv


def look_at(pos, target) -> list[float]:
    """A camera's ``xyaxes`` so that it looks from ``pos`` at ``target`` with world z up."""
    forward = np.asarray(target, float) - np.asarray(pos, float)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    return [*right, *up]


def table_scene(robot: RobotSpec) -> mujoco.MjSpec:
    """The arm on a table with lights, a backdrop and a front camera ``agentview`` looking at
    the workspace. Tasks add their objects to the returned spec's worldbody."""
    spec = mujoco.MjSpec()
    spec.modelname = f"{robot.name}_table"
    spec.option.timestep = TIMESTEP
    # implicitfast integrates the servos' damping implicitly, so kv needs no tiny timestep.
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    spec.option.cone = mujoco.mjtCone.mjCONE_ELLIPTIC  # less slip in pinch grasps
    spec.visual.global_.offwidth = spec.visual.global_.offheight = 256
    spec.visual.quality.shadowsize = 0  # shadows cost ~10x the frame under software GL
    spec.add_texture(name="sky", type=mujoco.mjtTexture.mjTEXTURE_SKYBOX,
                     builtin=mujoco.mjtBuiltin.mjBUILTIN_GRADIENT, width=64, height=64,
                     rgb1=[0.55, 0.65, 0.8], rgb2=[0.15, 0.15, 0.2])
    spec.add_texture(name="wood", type=mujoco.mjtTexture.mjTEXTURE_2D,
                     builtin=mujoco.mjtBuiltin.mjBUILTIN_CHECKER, width=256, height=256,
                     rgb1=[0.62, 0.5, 0.38], rgb2=[0.58, 0.46, 0.35])
    spec.add_material(name="table", textures=["", "wood"], texrepeat=[6, 6])
    world = spec.worldbody
    sun = mujoco.mjtLightType.mjLIGHT_DIRECTIONAL
    world.add_light(pos=[0.4, 0, 1.5], dir=[0, 0, -1], type=sun, castshadow=False,
                    diffuse=[0.7, 0.7, 0.7])
    world.add_light(pos=[1.5, 0.8, 1.0], dir=[-1, -0.5, -0.6], type=sun, castshadow=False,
                    diffuse=[0.3, 0.3, 0.3])
    world.add_geom(name="floor", type=mujoco.mjtGeom.mjGEOM_PLANE, size=[3, 3, 0.01],
                   pos=[0, 0, -0.75], rgba=[0.3, 0.3, 0.33, 1], contype=0, conaffinity=0)
    world.add_geom(name="table", type=mujoco.mjtGeom.mjGEOM_BOX, size=TABLE_HALF,
                   pos=[TABLE_CENTRE_X, 0, -TABLE_HALF[2]], material="table",
                   friction=[1.0, 0.005, 0.0001])
    cam_pos = [1.1, 0.0, 0.6]
    camera = world.add_camera(name="agentview", pos=cam_pos, fovy=45)
    camera.alt.type = mujoco.mjtOrientation.mjORIENTATION_XYAXES
    camera.alt.xyaxes = look_at(cam_pos, [0.38, 0.0, 0.08])
    world.add_frame().attach_body(arm_spec(robot).body(robot.base_body), "", "")
    return spec
