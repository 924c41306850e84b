"""Scripted experts for the robosuite tasks: phase machines that read only the observation dict
(eef pose, finger joints and robosuite's ``object-state``) and send delta OSC actions.

Every expert grasps the same way (hover above the grasp point with the gripper yawed to the
object, descend, close, lift) and the place tasks then carry the object, steering the object's
observed position (not the hand's) to the target, lower it, open and back off. A dropped or
missed object sends the expert back to the approach, so one slip does not end the episode.

This module imports neither robosuite nor the env: experts may run in another process.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from robopolicy.sim.core import ScriptedExpert, SimError

# --- constants read from the robosuite 1.5.1 models (positions are world frame, metres) -------
# PickPlaceCan: the Can belongs in bin2's 4th quadrant, x in [0.1, 0.295], y in [0.28, 0.525]
# (PickPlace.not_in_bin with bin2_pos (0.1, 0.28, 0.8) and bin size 0.39 x 0.49). Its centre,
# env.target_bin_placements[3] = (0.1975, 0.4025), is at the edge of the Panda's reach from its
# base at (-0.5, -0.1), so aim inside the quadrant nearer the robot, 4-6 cm from its edges.
CAN_BIN_XY = np.array([0.14, 0.34])
# NutAssemblySquare: peg1 (the square nut's peg), body pos in models/assets/arenas/pegs_arena.xml;
# the peg is a box of half size 0.016 x 0.016 x 0.1 around that point, top at z = 0.95.
SQUARE_PEG_XY = np.array([0.23, 0.1])
# The square nut's handle: a box centred at x = 0.054 in the nut frame (site
# "SquareNut_handle_site"), free of the nut's wall for 0.044 < x < 0.079; grasp it there.
NUT_HANDLE_X = 0.062

# Hand headings (yaw of the hand pointing down, 0 at the home pose) the Panda's wrist joint
# (limits +-2.9 rad, 0.79 rad at home) reaches with margin: turning the hand from home over this
# range keeps that joint within [-0.5, 2.1] rad (measured with NutAssemblySquare's start pose).
WRIST_YAW_RANGE = (-1.9, 2.8)
# OSC delta scaling of robosuite's BASIC Panda controller: action 1 = 5 cm / 0.5 rad of goal.
POS_SCALE, ROT_SCALE = 0.05, 0.5
R_DOWN = np.diag([1.0, -1.0, -1.0])  # the hand pointing straight down, fingers along world y
OPEN, CLOSE = -1.0, 1.0


def quat_to_mat(q: np.ndarray) -> np.ndarray:
    """Rotation matrix of a unit quaternion in robosuite's (x, y, z, w) order."""
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def mat_to_rotvec(r: np.ndarray) -> np.ndarray:
    """Axis-angle vector of a rotation matrix (angles below pi, which is all the servo asks)."""
    angle = np.arccos(np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0))
    axis = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    norm = np.linalg.norm(axis)
    if norm < 1e-9:
        return np.zeros(3)
    return axis / norm * angle


def rot_z(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def yaw_of(r: np.ndarray) -> float:
    """Heading of a frame's x axis in the world xy plane."""
    return float(np.arctan2(r[1, 0], r[0, 0]))


def wrap(angle: float, period: float) -> float:
    """``angle`` shifted by whole periods into [-period / 2, period / 2)."""
    return float((angle + period / 2) % period - period / 2)


class View:
    """What an expert reads from one observation."""

    def __init__(self, obs: Mapping[str, np.ndarray], pos: slice, quat: slice):
        self.eef = np.asarray(obs["robot0_eef_pos"], dtype=np.float64)
        self.rot = quat_to_mat(obs["robot0_eef_quat"]) @ R_DOWN.T  # identity when pointing down
        self.yaw = yaw_of(self.rot)
        fingers = np.asarray(obs["robot0_gripper_qpos"], dtype=np.float64)
        self.width = float(fingers[0] - fingers[1])  # finger opening, ~0.08 m fully open
        state = np.asarray(obs["object"], dtype=np.float64)
        self.obj = state[pos]
        self.obj_rot = quat_to_mat(state[quat])
        self.obj_yaw = yaw_of(self.obj_rot)


class PickExpert(ScriptedExpert):
    """Approach, descend, close, lift: the Lift expert, and the first half of the others.

    Phases are methods ``_<phase>(view)`` returning (hand target position, hand yaw, gripper);
    ``self._goto`` switches phase. Thresholds, heights and speeds are drawn per episode through
    ``self.jitter`` so demonstrations differ.
    """

    OBJ_POS, OBJ_QUAT = slice(0, 3), slice(3, 7)  # layout of this task's "object" observation
    YAW_PERIOD = np.pi / 2  # the cube is symmetric under quarter turns
    GRASP_DZ = 0.0  # grasp height relative to the object's origin
    HOLD_RADIUS = 0.03  # the object counts as held within this distance of the grasp point

    def __init__(self, action_space, seed=None, action_noise=0.0, timing_jitter=0.0):
        if not np.allclose(action_space.high, 1.0) or action_space.shape != (7,):
            raise SimError("the robosuite experts send delta actions; build the env with "
                           "control='delta'")
        super().__init__(action_space, seed, action_noise, timing_jitter)

    def reset(self, obs: Mapping[str, np.ndarray]) -> None:
        self.phase, self.steps = "approach", 0
        self.speed = min(1.0, self.jitter(0.8))  # cap on the position action
        self.gain = self.jitter(12.0)  # position action per metre of error
        self.hover = self.jitter(0.08)  # approach height above the grasp point
        self.tol = self.jitter(0.008)  # position tolerance that ends a move
        self.close_steps = round(self.jitter(8))
        self.lift_height = self.jitter(0.12)
        self.anchor = np.zeros(3)  # a fixed hand target some phases hold
        self.last_eef, self.stalled = np.zeros(3), False

    def _goto(self, phase: str, anchor: np.ndarray | None = None) -> None:
        self.phase, self.steps = phase, 0
        if anchor is not None:
            self.anchor = np.array(anchor, dtype=np.float64)

    def _view(self, obs: Mapping[str, np.ndarray]) -> View:
        return View(obs, self.OBJ_POS, self.OBJ_QUAT)

    def _act(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        view = self._view(obs)
        self.steps += 1
        # the hand has stopped (blocked by the table or the object): a move can end early
        self.stalled = self.steps > 5 and np.linalg.norm(view.eef - self.last_eef) < 1e-3
        self.last_eef = view.eef
        target, yaw, grip = getattr(self, f"_{self.phase}")(view)
        return self._servo(view, target, yaw, grip)

    def _servo(self, view: View, target: np.ndarray, yaw: float, grip: float) -> np.ndarray:
        """Delta action moving the hand toward ``target``, pointing down at heading ``yaw``."""
        dpos = np.clip((target - view.eef) * self.gain, -1.0, 1.0)
        norm = np.abs(dpos).max()
        if norm > self.speed:  # scale, not clip per axis, so the hand moves straight
            dpos *= self.speed / norm
        desired = rot_z(yaw) @ R_DOWN
        current = view.rot @ R_DOWN
        # command most, not all, of the remaining turn each step: it settles without overshoot
        drot = mat_to_rotvec(desired @ current.T) / ROT_SCALE * 0.8
        return np.concatenate([dpos, np.clip(drot, -1, 1), [grip]])

    # --- grasping --------------------------------------------------------------------------
    def _grasp_point(self, view: View) -> np.ndarray:
        return view.obj + np.array([0.0, 0.0, self.GRASP_DZ])

    def _grasp_yaw(self, view: View) -> float:
        """Hand heading that puts the fingers across the object, the one nearest zero."""
        return wrap(view.obj_yaw, self.YAW_PERIOD)

    def _held(self, view: View) -> bool:
        near = np.linalg.norm(self._grasp_point(view) - view.eef) < self.HOLD_RADIUS
        return bool(near and view.width > 0.01)  # fully closed fingers hold nothing

    def _approach(self, view: View):
        grasp, yaw = self._grasp_point(view), self._grasp_yaw(view)
        target = grasp + np.array([0.0, 0.0, self.hover])
        aligned = abs(wrap(view.yaw - yaw, 2 * np.pi)) < 0.1
        if np.linalg.norm(target - view.eef) < 2 * self.tol and aligned:
            self._goto("descend")
        return target, yaw, OPEN

    def _descend(self, view: View):
        grasp = self._grasp_point(view)
        if np.linalg.norm((grasp - view.eef)[:2]) > 0.03:  # the object moved away: start over
            self._goto("approach")
        elif np.linalg.norm(grasp - view.eef) < self.tol or self.stalled or self.steps > 40:
            self._goto("close", anchor=grasp)
        return grasp, self._grasp_yaw(view), OPEN

    def _close(self, view: View):
        if self.steps >= self.close_steps:
            self._goto("lift", anchor=self.anchor + np.array([0.0, 0.0, self.lift_height]))
        return self.anchor, view.yaw, CLOSE

    def _lift(self, view: View):
        if self.steps > 4 and not self._held(view):
            self._goto("regrasp", anchor=view.eef + np.array([0.0, 0.0, 0.05]))
            return self._regrasp(view)
        if np.linalg.norm(self.anchor - view.eef) < 2 * self.tol:
            self._lifted(view)
        return self.anchor, view.yaw, CLOSE

    def _lifted(self, view: View) -> None:
        """Next phase once the object is up (Lift succeeds before this; keep holding)."""

    def _regrasp(self, view: View):
        """Open and rise a little before approaching again."""
        if self.steps > 6:
            self._goto("approach")
        return self.anchor, view.yaw, OPEN


class PlaceExpert(PickExpert):
    """Pick, then carry the object over ``_place_xy``, lower it to ``PLACE_Z``, let go, back off."""

    CARRY_Z = 1.0  # object height while carrying (clears the bin walls and the peg)
    PLACE_Z = 0.9  # object height at which it is let go
    # How far below PLACE_Z the lowering aims. Aiming past the release height makes the object
    # cross it moving, so the release is a clear function of the observed height; aiming at it
    # makes the object creep up to the threshold, and a learned policy then hovers just above.
    LOWER_PAST = 0.0
    PLACE_TOL = 0.01  # object-to-target distance in xy that ends the carry

    def reset(self, obs: Mapping[str, np.ndarray]) -> None:
        super().reset(obs)
        self.carry_z = 0.9 + self.jitter(self.CARRY_Z - 0.9)  # jitter the clearance, not z
        self.place_tol = self.jitter(self.PLACE_TOL)

    def _place_xy(self, view: View) -> np.ndarray:
        raise NotImplementedError

    def _place_yaw(self, view: View) -> float:
        return view.yaw

    def _lifted(self, view: View) -> None:
        self._goto("carry")

    def _object_target(self, view: View, obj_target: np.ndarray) -> np.ndarray:
        """Hand target that moves the held object to ``obj_target``."""
        return view.eef + (obj_target - view.obj)

    def _carry(self, view: View):
        if not self._held(view):
            self._goto("regrasp", anchor=view.eef + np.array([0.0, 0.0, 0.05]))
            return self._regrasp(view)
        place = self._place_xy(view)
        goal = np.array([*place, self.carry_z])
        if view.obj[2] < self.carry_z - 0.05:  # rise first, then go across
            goal[:2] = view.obj[:2]
        yaw = self._place_yaw(view)
        aligned = abs(wrap(view.yaw - yaw, 2 * np.pi)) < 0.05
        error = np.linalg.norm(place - view.obj[:2])
        # past the step budget, a near miss is good enough (the arm may be at its reach limit)
        if (error < self.place_tol and aligned) or (self.steps > 80 and error < 0.03):
            self._goto("lower")
        return self._object_target(view, goal), yaw, CLOSE

    def _lower(self, view: View):
        goal = np.array([*self._place_xy(view), self.PLACE_Z - self.LOWER_PAST])
        if view.obj[2] < self.PLACE_Z + self.tol or self.stalled or self.steps > 40:
            self._goto("release", anchor=view.eef)
        return self._object_target(view, goal), self._place_yaw(view), CLOSE

    def _release(self, view: View):
        if self.steps >= self.close_steps:
            self._goto("retreat", anchor=view.eef + np.array([0.0, 0.0, 0.12]))
        return self.anchor, view.yaw, OPEN

    def _retreat(self, view: View):
        # the task succeeds on the way up; arriving without success means the object missed
        if np.linalg.norm(self.anchor - view.eef) < 2 * self.tol:
            self._goto("approach")
        return self.anchor, view.yaw, OPEN


class LiftExpert(PickExpert):
    """Lift: object-state is cube pos (3), cube quat (4), gripper-to-cube (3)."""


class CanExpert(PlaceExpert):
    """PickPlaceCan: object-state is can-to-eef pos (3) and quat (4), can pos (3), quat (4)."""

    OBJ_POS, OBJ_QUAT = slice(7, 10), slice(10, 14)
    HOLD_RADIUS = 0.04
    # The can rests on bin2's floor at z ~0.903: let go 2.5 cm above it, on the way down. The
    # target is 4-6 cm inside the quadrant, so 2 cm of aim is enough.
    PLACE_Z, LOWER_PAST, PLACE_TOL = 0.93, 0.05, 0.02

    def _grasp_yaw(self, view: View) -> float:
        return 0.0  # a can is round: grasp with the hand's home heading

    def _place_xy(self, view: View) -> np.ndarray:
        return CAN_BIN_XY


class SquareNutExpert(PlaceExpert):
    """NutAssemblySquare: object-state is nut-to-eef pos (3) and quat (4), nut pos (3), quat (4).

    The hand grasps the handle with the fingers across it, then turns the nut square to the peg
    (a multiple of 90 degrees) while carrying it, and lowers it over the peg.
    """

    OBJ_POS, OBJ_QUAT = slice(7, 10), slice(10, 14)
    YAW_PERIOD = np.pi  # fingers across the handle: the hand's y axis along the nut's y axis
    CARRY_Z, PLACE_Z = 1.0, 0.85

    def reset(self, obs: Mapping[str, np.ndarray]) -> None:
        super().reset(obs)
        self.nut_yaw = np.pi  # heading the nut is carried to; chosen when the carry starts

    def _grasp_point(self, view: View) -> np.ndarray:
        return view.obj + view.obj_rot @ np.array([NUT_HANDLE_X, 0.0, 0.0])

    def _place_xy(self, view: View) -> np.ndarray:
        return SQUARE_PEG_XY

    def _lifted(self, view: View) -> None:
        """Pick the nut heading to place with: square to the peg, handle pointing back toward
        the robot if the wrist can turn that far (the hand then stays well inside the arm's
        reach; with the handle pointing away the hand would have to go past it), else sideways.
        """
        options = []
        for nut_yaw in (np.pi, np.pi / 2, -np.pi / 2, 0.0):
            turn = wrap(nut_yaw - view.obj_yaw, 2 * np.pi)
            hand_yaw = view.yaw + turn
            if WRIST_YAW_RANGE[0] < hand_yaw < WRIST_YAW_RANGE[1]:
                options.append(nut_yaw)
        self.nut_yaw = options[0] if options else np.pi
        self._goto("carry")

    def _place_yaw(self, view: View) -> float:
        # the nut turns with the hand: turn the hand by what the nut still has to turn
        return view.yaw + wrap(self.nut_yaw - view.obj_yaw, 2 * np.pi)


EXPERTS = {"lift": LiftExpert, "pick_place_can": CanExpert,
           "nut_assembly_square": SquareNutExpert}
