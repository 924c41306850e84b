"""The recorder on robosuite's real Lift with a real store on disk: replay, the headless CLI,
SIGKILL mid-episode, discard, append, intervention, and the errors users can cause; and the
keyboard through a pty driving the joint-space panda_lift."""

import os
import pty
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from robopolicy.cli import main
from robopolicy.data.store import EpisodeStore
from robopolicy.data.validate import validate_store
from robopolicy.errors import StoreError
from robopolicy.sim.core import make_env
from robopolicy.sim.ik import ARM_SPEED, quat_error
from robopolicy.teleop.device import (
    DISCARD,
    INTERVENE,
    QUIT,
    SAVE,
    START,
    Reading,
    Shaping,
    TeleopError,
)
from robopolicy.teleop.display import NoDisplay
from robopolicy.teleop.keyboard import KeyboardDevice
from robopolicy.teleop.recorder import Recorder, open_store
from robopolicy.teleop.scripted import ReplayDevice, ScriptedDevice, StreamRecorder, save_stream
from robopolicy.teleop.writer import BackgroundEpisodeWriter

CHILD = Path(__file__).with_name("recorder_child.py")
HEADLESS = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}


@pytest.fixture(scope="module")
def lift():
    env = make_env("lift", max_episode_steps=60)
    yield env
    env.close()


def run(env, device, out, **kwargs) -> dict:
    with open_store(out, env, "lift", source=f"teleop:{device.name}") as store:
        return Recorder(env, device, store, task="lift", rate=0, **kwargs).run()


def stream_of(*ticks) -> list[Reading]:
    """Readings from (motion x, events) pairs: motion along x only, gripper open."""
    return [Reading([x, 0, 0, 0, 0, 0], -1.0, events) for x, events in ticks]


def test_replay_drives_lift_and_actions_equal_the_stream(lift, tmp_path):
    stream = tmp_path / "scripted.npz"
    live = run(lift, StreamRecorder(ScriptedDevice(), stream), tmp_path / "live.zarr",
               episodes=2, notes="first session")
    assert live["saved_episodes"] == 2
    replay = ReplayDevice(stream)
    readings = [replay.read({}) for _ in range(len(replay))]
    replay.index = 0
    summary = run(lift, replay, tmp_path / "replay.zarr")
    assert summary["saved_episodes"] == 2
    assert validate_store(tmp_path / "replay.zarr") == []
    want = np.stack([Shaping()(r) for r in readings])  # every tick of this stream records
    with EpisodeStore.open(tmp_path / "replay.zarr") as got, \
            EpisodeStore.open(tmp_path / "live.zarr") as first:
        np.testing.assert_array_equal(got.load("action"), want)
        np.testing.assert_array_equal(got.load("action"), first.load("action"))
        np.testing.assert_array_equal(got.episode_ends, first.episode_ends)
        assert got.meta("device").tolist() == ["replay"] * 2
        assert first.meta("notes").tolist() == ["first session"] * 2
        assert first.meta("success").all() and first.meta("seed").tolist() == [0, 1]


def test_cli_scripted_three_episodes_headless(tmp_path):
    out = tmp_path / "demos.zarr"
    proc = subprocess.run([sys.executable, "-m", "robopolicy.cli", "teleop", "--task", "lift",
                           "--device", "scripted", "--episodes", "3", "--out", str(out),
                           "--notes", "ci run"], env=HEADLESS, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "saved 3 episodes" in proc.stdout
    assert validate_store(out) == []
    with EpisodeStore.open(out) as store:
        assert store.n_episodes == 3 and store.meta("success").all()
        assert store.info["task"] == "lift" and store.fps == 20.0
        assert store.roles["timestamp"] == store.roles["intervention"] == "other"
        meta = store.episode_meta(0)
        assert meta["device"] == "scripted" and meta["source"] == "teleop:scripted"
        assert meta["notes"] == "ci run" and meta["duration_s"] > 1.0
        ep = store.get_episode(0)
        assert ep["timestamp"][0] == 0.0
        period = np.diff(ep["timestamp"])
        assert 0.04 < np.median(period) < 0.06  # held at 20 Hz
        assert ep["intervention"].all()  # a human (here: the script) drove every step


def test_sigkill_mid_episode_keeps_saved_episodes(tmp_path):
    out = tmp_path / "killed.zarr"
    proc = subprocess.Popen([sys.executable, str(CHILD), str(out), "60"], env=HEADLESS,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(60, proc.kill)
    watchdog.start()
    saved = None
    try:
        while proc.poll() is None:
            time.sleep(0.01)
            try:
                store = EpisodeStore.open(out)
            except StoreError:  # not there yet, or half created
                continue
            with store:
                if store.n_episodes < 2 or not store.uncommitted():
                    continue
                saved = {i: store.get_episode(i) for i in range(store.n_episodes)}
            proc.send_signal(signal.SIGKILL)  # mid-episode, with steps flushed past the end
            break
        proc.wait()
    finally:
        watchdog.cancel()
    assert saved is not None, f"child exited early: {proc.stderr.read()}"
    assert proc.returncode == -signal.SIGKILL
    with EpisodeStore.open(out) as store:  # a reader sees exactly the saved episodes
        assert store.n_episodes >= len(saved)
        for i, episode in saved.items():
            for key, value in episode.items():
                np.testing.assert_array_equal(store.get_episode(i)[key], value)
    with EpisodeStore.open(out, mode="a") as store:  # the next writer trims the tail
        assert store.uncommitted() == []
    assert validate_store(out) == []


def test_discard_and_append_leave_saved_episodes_untouched(lift, tmp_path):
    out = tmp_path / "sessions.zarr"
    run(lift, ScriptedDevice(), out, episodes=1)
    with EpisodeStore.open(out) as store:
        before = store.get_episode(0)
    save_stream(tmp_path / "ops.npz", stream_of(
        (0, ()), (0.5, (START,)), (0.5, ()), (0.5, (DISCARD,)),  # 2 steps, then discarded
        (0, ()), (-0.5, (START,)), (-0.5, ()), (-0.5, ()), (0, (SAVE,)),  # 3 steps, saved
        (0.2, (START,)), (0.2, (QUIT,))), "keyboard", Shaping())  # 1 step, quit: dropped
    summary = run(lift, ReplayDevice(tmp_path / "ops.npz"), out, notes="second session")
    assert summary["saved_episodes"] == 1 and summary["attempts"] == 3
    assert validate_store(out) == []
    with EpisodeStore.open(out) as store:
        assert store.n_episodes == 2  # appended to the first session's store
        for key, value in before.items():
            np.testing.assert_array_equal(store.get_episode(0)[key], value)
        new = store.get_episode(1)
        np.testing.assert_array_equal(new["action"][:, 0], [-0.5, -0.5, -0.5])
        assert store.meta("notes").tolist() == ["", "second session"]
        assert store.meta("success").tolist() == [True, False]


def test_intervention_flags_and_replan(tmp_path):
    from robopolicy.policies import FlowConfig, FlowModel, load_model
    from robopolicy.teleop.recorder import PolicyDriver

    env = make_env("lift", max_episode_steps=20)
    shapes = {k: list(s.shape) for k, s in env.observation_space.spaces.items()}
    shapes["action"] = [7]
    model = FlowModel(FlowConfig(horizon=10, n_obs_steps=2, n_action_steps=8, shapes=shapes,
                                 backbone="mlp", backbone_kwargs={"hidden_dim": 32},
                                 num_inference_steps=2))
    model.fit_normalizer({k: {"min": -np.ones(v), "max": np.ones(v)}
                          for k, (v,) in shapes.items()})
    model.save_pretrained(tmp_path / "ckpt")
    loaded = load_model(tmp_path / "ckpt")
    chunks, predict = [], loaded.predict_action

    def spy(*args, **kwargs):  # the real sampler, keeping each chunk it returns
        out = predict(*args, **kwargs)
        chunks.append(out["action"][0].numpy().copy())  # (Ta, Da)
        return out

    loaded.predict_action = spy
    stream = tmp_path / "operator.npz"
    device = StreamRecorder(ScriptedDevice(script={5: [INTERVENE], 12: [INTERVENE]}), stream)
    summary = run(env, device, tmp_path / "dagger.zarr", policy=PolicyDriver(loaded, env),
                  episodes=1, keep_failures=True)
    env.close()
    assert summary["saved_episodes"] == 1
    with EpisodeStore.open(tmp_path / "dagger.zarr") as store:
        ep = store.get_episode(0)
    want = np.zeros(20, bool)
    want[5:12] = True  # taken over at tick 5, handed back at tick 12
    np.testing.assert_array_equal(ep["intervention"], want)
    operator = ReplayDevice(stream)
    device_actions = np.stack([operator.poll({}).command for _ in range(20)])
    np.testing.assert_array_equal(ep["action"][5:12], device_actions[5:12])
    # The model planned at step 0 and, replanning at the hand-back, at step 12: steps 12..19
    # are one fresh chunk, not the 3 actions left over from step 0's chunk.
    assert len(chunks) == 2
    np.testing.assert_allclose(ep["action"][:5], chunks[0][:5], rtol=1e-6)
    np.testing.assert_allclose(ep["action"][12:], chunks[1], rtol=1e-6)


def test_store_mismatch_is_a_one_line_error(lift, tmp_path):
    EpisodeStore.create(tmp_path / "reach.zarr", fps=50.0, task="reach").close()
    with pytest.raises(TeleopError, match="holds task 'reach' at 50.0 Hz, not 'lift' at 20.0"):
        open_store(tmp_path / "reach.zarr", lift, "lift", source="teleop:keyboard")
    with EpisodeStore.create(tmp_path / "other.zarr", fps=20.0, task="lift") as store:
        store.add_episode({"action": np.zeros((3, 7), np.float32)})
    with pytest.raises(TeleopError, match="keys differ"):
        open_store(tmp_path / "other.zarr", lift, "lift", source="teleop:keyboard")


@pytest.mark.parametrize(("argv", "message"), [
    (["--device", "joystick"], "unknown device 'joystick'"),
    (["--device", "replay", "--replay", "missing.npz"], "missing.npz: no such device stream"),
    (["--device", "replay"], "give the stream to play"),
    (["--device", "scripted", "--episodes", "0"], "--episodes must be >= 1"),
])
def test_cli_bad_input_is_one_line(tmp_path, capsys, argv, message):
    code = main(["teleop", "--task", "lift", "--out", str(tmp_path / "x.zarr"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_background_writer_keeps_order_and_reports_errors(tmp_path):
    with EpisodeStore.create(tmp_path / "w.zarr", fps=10.0) as store, \
            BackgroundEpisodeWriter(store, max_queue=4, flush_every=3) as writer:
        writer.begin()
        for t in range(10):
            writer.append({"action": np.full(2, t, np.float32)})
        assert writer.commit({"seed": 7}) == 0
        np.testing.assert_array_equal(store.load("action")[:, 0], np.arange(10))
        writer.begin()
        writer.append({"action": np.zeros(3, np.float32)})  # wrong shape: fails in the thread
        with pytest.raises(StoreError) as err:
            writer.commit()
        assert str(err.value) == (f"{tmp_path / 'w.zarr'}: 'action' has step shape (3,), the "
                                  "store has (2,)")
        assert store.n_episodes == 1
        np.testing.assert_array_equal(store.load("action")[:, 0], np.arange(10))


class KeysPerTick(NoDisplay):
    """Types the next key bytes into the pty after each tick, so the recorder reads them on the
    next: a deterministic operator at a real terminal."""

    def __init__(self, master: int, keys: list[bytes]):
        super().__init__()
        self.master, self.keys = master, list(keys)

    def show(self, status, obs, env) -> None:
        if self.keys:
            os.write(self.master, self.keys.pop(0))


def test_keyboard_keys_through_a_pty_become_recorded_actions(lift, tmp_path):
    master, slave = pty.openpty()
    try:
        keys = KeysPerTick(master, [b"\r", b"w", b"w", b" ", b"", b"\rq"])  # start ... save, quit
        summary = run(lift, KeyboardDevice(fd=slave, backend="terminal"), tmp_path / "kb.zarr",
                      display=keys)
    finally:
        os.close(master)
        os.close(slave)
    assert summary["saved_episodes"] == 1
    with EpisodeStore.open(tmp_path / "kb.zarr") as store:
        action = store.get_episode(0)["action"]
        assert store.episode_meta(0)["device"] == "keyboard"
    want = np.zeros((5, 7), np.float32)
    want[1:, 0] = 1.0  # "w" twice: +x, held for three ticks after the last press
    want[:, 6] = [-1, -1, -1, 1, 1]  # space closed the gripper
    np.testing.assert_array_equal(action, want)


# Key schedule for panda_lift: enter, then per segment a motion key typed on 8 ticks (the
# terminal backend holds it 2 more) and 20 idle ticks to settle; then save and quit.
SEGMENT = 28
SEGMENT_KEYS = {b"r": (2, 1.0), b"w": (0, 1.0), b"d": (1, -1.0)}  # key: axis, sign (+z +x -y)
# m between measured and commanded displacement (15 cm each); measured: 0.18 to 0.38 mm.
KEYBOARD_TOLERANCE = 0.001


def test_keyboard_drives_panda_lift_in_the_commanded_direction_and_replays(tmp_path):
    """Each key moves panda_lift's hand (joint-space actions, through the IK mapping) by the
    distance it commanded along its axis, the orientation held; the recorded key stream
    replays to the same joint actions."""
    env = make_env("panda_lift")
    keys = [b"\r"]
    for key in SEGMENT_KEYS:
        keys += [key] * 8 + [b""] * (SEGMENT - 8)
    keys += [b"", b"\r", b"q"]  # one more step (to observe the last segment's end), save, quit
    master, slave = pty.openpty()
    try:
        device = StreamRecorder(KeyboardDevice(fd=slave, backend="terminal"), tmp_path / "k.npz")
        with open_store(tmp_path / "kb.zarr", env, "panda_lift", "teleop:keyboard") as store:
            summary = Recorder(env, device, store, task="panda_lift", rate=0,
                               display=KeysPerTick(master, keys)).run()
    finally:
        os.close(master)
        os.close(slave)
    assert summary["saved_episodes"] == 1
    with EpisodeStore.open(tmp_path / "kb.zarr") as store:
        ep = store.get_episode(0)
    assert len(ep["action"]) == 2 + SEGMENT * len(SEGMENT_KEYS)
    # stream tick t is step t - 1 (tick 0 was idle: enter is read on tick 1)
    stream = ReplayDevice(tmp_path / "k.npz")
    commands = np.stack([Shaping()(stream.read({})) for _ in range(len(stream))])
    step = ARM_SPEED / env.fps  # metres per tick at full deflection
    pos, quat = ep["eef_pos"], ep["eef_quat"]
    for k, (axis, sign) in enumerate(SEGMENT_KEYS.values()):
        a, b = 1 + k * SEGMENT, 1 + (k + 1) * SEGMENT  # the segment's steps
        commanded = commands[a + 1:b + 1, :3].sum(axis=0) * step
        assert commanded[axis] == pytest.approx(sign * 10 * step)  # 8 presses + 2 held
        measured = pos[b] - pos[a]
        assert np.linalg.norm(measured - commanded) < KEYBOARD_TOLERANCE
        assert quat_error(quat[b], quat[a]) < 0.005  # measured: below 0.7 mrad
    replayed = tmp_path / "again.zarr"
    with open_store(replayed, env, "panda_lift", "teleop:replay") as store:
        Recorder(env, ReplayDevice(tmp_path / "k.npz"), store, task="panda_lift", rate=0).run()
    with EpisodeStore.open(replayed) as store:
        np.testing.assert_array_equal(store.load("action"), ep["action"])
    env.close()
