"""Devices without the simulator: shaping, the keyboard through a real pseudo-terminal, the
SpaceMouse and joystick decoders on real report bytes, discovery with no hardware attached, and
device streams written and replayed."""

import os
import pty
import struct
import termios

import numpy as np
import pytest

from robopolicy.teleop.device import (
    DISCARD,
    INTERVENE,
    QUIT,
    RESET,
    SAVE,
    START,
    Reading,
    Shaping,
    TeleopError,
    make_device,
)
from robopolicy.teleop.gamepad import (
    JS_AXIS,
    JS_BUTTON,
    JS_INIT,
    GamepadDevice,
    GamepadState,
    decode_events,
)
from robopolicy.teleop.keyboard import KeyboardDevice, parse_keys
from robopolicy.teleop.scripted import ReplayDevice, StreamRecorder, save_stream
from robopolicy.teleop.spacemouse import SpaceMouseDecoder, SpaceMouseDevice, find_spacemice


def test_shaping_deadzone_and_scale():
    shape = Shaping(scale=0.5, rot_scale=0.2, deadzone=0.1)
    action = shape(Reading([0.05, -0.05, 0.55, 1.0, -1.0, 0.1], 1.0))
    np.testing.assert_allclose(action, [0, 0, 0.25, 0.2, -0.2, 0, 1.0], atol=1e-7)
    assert action.dtype == np.float32 and action.shape == (7,)
    # identity by default, and clipped to the action space
    np.testing.assert_array_equal(Shaping()(Reading([2, 0, 0, 0, 0, 0], -3)),
                                  [1, 0, 0, 0, 0, 0, -1])
    with pytest.raises(TeleopError, match="deadzone"):
        Shaping(deadzone=1.0)
    device = make_device("keyboard", scale=0.5, deadzone=0.2)
    assert device.shaping == Shaping(0.5, 0.5, 0.2)


def test_unknown_device_and_event_are_one_line_errors():
    with pytest.raises(TeleopError, match="unknown device 'joystick'; use one of keyboard"):
        make_device("joystick")
    with pytest.raises(TeleopError, match="unknown device event"):
        Reading(np.zeros(6), 0.0, ("explode",))


def test_parse_keys_bytes():
    data = b"wA\r \x7f\x1b[A\x1b[D\x1b[1;5C\x1bOBn\x03"
    assert parse_keys(data) == ["w", "a", "enter", "space", "backspace", "up", "left", "down",
                                "n", "ctrl-c"]  # ctrl-right (\x1b[1;5C) skipped whole


@pytest.fixture
def pty_pair():
    master, slave = pty.openpty()
    yield master, slave
    os.close(master)
    os.close(slave)


def test_keyboard_through_a_pty(pty_pair):
    master, slave = pty_pair
    before = termios.tcgetattr(slave)
    obs = {}
    with KeyboardDevice(fd=slave, backend="terminal", hold_ticks=2) as kb:
        raw = termios.tcgetattr(slave)
        assert not raw[3] & termios.ICANON and not raw[3] & termios.ECHO
        assert kb.poll(obs).command.tolist() == [0] * 6 + [-1]  # nothing pressed, gripper open
        os.write(master, b"w\x1b[Dr")  # +x, left arrow (+y), +z
        got = kb.poll(obs)
        np.testing.assert_array_equal(got.command, [1, 1, 1, 0, 0, 0, -1])
        assert got.events == ()
        np.testing.assert_array_equal(kb.poll(obs).command[:3], [1, 1, 1])  # held 2 ticks
        np.testing.assert_array_equal(kb.poll(obs).command[:3], [0, 0, 0])  # then released
        os.write(master, b" x\r")  # close gripper, roll -, enter
        got = kb.poll(obs)
        np.testing.assert_array_equal(got.command, [0, 0, 0, -1, 0, 0, 1])
        assert got.events == (START,)
        kb.recording = True  # the recorder says it is recording: enter now saves
        os.write(master, b"\ri\x7fnq")
        assert kb.poll(obs).events == (SAVE, INTERVENE, DISCARD, RESET, QUIT)
        os.write(master, b"\x03")
        assert kb.poll(obs).events == (QUIT,)  # ctrl-c is a key, not a signal
    assert termios.tcgetattr(slave) == before  # the terminal is restored


def test_keyboard_restores_the_terminal_after_an_error(pty_pair):
    master, slave = pty_pair
    before = termios.tcgetattr(slave)
    with (pytest.raises(RuntimeError, match="^boom$"),
          KeyboardDevice(fd=slave, backend="terminal")):
        raise RuntimeError("boom")  # the caller's error comes through unchanged
    assert termios.tcgetattr(slave) == before


def test_keyboard_without_a_terminal_is_a_clear_error(tmp_path):
    with open(tmp_path / "f", "w+") as f, pytest.raises(TeleopError, match="not a terminal"):
        KeyboardDevice(fd=f.fileno(), backend="terminal").open()


def hid_report(report_id: int, *values: int) -> bytes:
    return bytes([report_id]) + struct.pack(f"<{len(values)}h", *values)


def test_spacemouse_report_decoding():
    dec = SpaceMouseDecoder()
    dec.feed(hid_report(1, 175, -350, 700))  # device x, y, z (z beyond full scale)
    dec.feed(hid_report(2, 35, 0, -70))  # rx, ry, rz
    # robot x = device y, robot y = device x, robot z = -device z
    np.testing.assert_allclose(dec.motion, [-1.0, 0.5, -1.0, 0.0, 0.1, 0.2])
    dec.feed(list(hid_report(1, 0, 0, 0, 350, 0, 0)))  # combined 13-byte report, as a list
    np.testing.assert_allclose(dec.motion, [0, 0, 0, 0, 1.0, 0])
    dec.feed(bytes([3, 0b10, 0]))
    assert dec.buttons == 2
    dec.feed(bytes([9, 1, 2]))  # unknown report id: ignored
    assert dec.buttons == 2


def test_spacemouse_buttons_to_events():
    sm = SpaceMouseDevice()
    assert sm.button_events(2) == () and sm.button_events(0) == (START,)  # right click
    sm.recording = True
    assert sm.button_events(2) == () and sm.button_events(0) == (SAVE,)
    assert sm.button_events(1) == () and sm.button_events(0) == () and sm.gripper == 1.0
    assert sm.button_events(3) == (INTERVENE,)  # both: intervene; releases do nothing more
    assert sm.button_events(2) == () and sm.button_events(0) == () and sm.gripper == 1.0
    for _ in range(sm.LONG_PRESS_TICKS):
        sm.button_events(2)
    assert sm.button_events(0) == (DISCARD,)  # long right press


def test_no_spacemouse_connected_is_a_clear_error():
    assert find_spacemice() == []  # no HID hardware on this machine
    with pytest.raises(TeleopError, match="no 3Dconnexion device found") as err:
        SpaceMouseDevice().open()
    assert "\n" not in str(err.value)


def js_event(time_ms: int, value: int, kind: int, number: int) -> bytes:
    return struct.pack("<IhBB", time_ms, value, kind, number)


def test_joystick_event_decoding():
    data = b"".join([js_event(10, 0, JS_BUTTON | JS_INIT, 0),  # initial state: no event
                     js_event(20, -32767, JS_AXIS, 1),  # left stick fully forward
                     js_event(21, 16384, JS_AXIS, 0),  # left stick half right
                     js_event(22, 32767, JS_AXIS, 5),  # RT fully pressed
                     js_event(30, 1, JS_BUTTON, 0), js_event(31, 0, JS_BUTTON, 0),  # A
                     js_event(32, 1, JS_BUTTON, 7), js_event(40, 1, JS_BUTTON, 3)])
    assert decode_events(data[:12]) == [(10, 0, JS_BUTTON | JS_INIT, 0)]  # whole records only
    state = GamepadState()
    state.feed(data)
    reading = state.reading()
    np.testing.assert_allclose(reading.motion, [1.0, -0.5, 1.0, 0, 0, 0], atol=1e-4)
    assert reading.gripper == 1.0 and reading.events == (START, INTERVENE)
    state.feed(js_event(50, 1, JS_BUTTON, 1) + js_event(51, 1, JS_BUTTON, 1))  # B, repeated
    assert state.reading().events == (RESET,)  # a held button fires once


def test_no_joystick_connected_is_a_clear_error():
    with pytest.raises(TeleopError, match="no joystick found"):
        GamepadDevice().open()


def test_gamepad_reads_a_joystick_file(tmp_path):
    # the kernel's js device is a stream of 8-byte records; a FIFO is one too
    fifo = tmp_path / "js0"
    os.mkfifo(fifo)
    writer_fd = os.open(fifo, os.O_RDWR)  # keep a writer open so reads do not see EOF
    try:
        with GamepadDevice(path=str(fifo)) as pad:
            os.write(writer_fd, js_event(1, 32767, JS_AXIS, 4) + js_event(2, 1, JS_BUTTON, 6)[:5])
            first = pad.poll({})
            os.write(writer_fd, js_event(2, 1, JS_BUTTON, 6)[5:])  # the rest of the record
            second = pad.poll({})
    finally:
        os.close(writer_fd)
    assert first.command[4] == pytest.approx(-1.0)  # right stick down: -pitch
    assert first.events == ()
    assert second.events == (DISCARD,)


def test_stream_round_trip(tmp_path, pty_pair):
    master, slave = pty_pair
    path = tmp_path / "kb.npz"
    shaping = Shaping(scale=0.5, deadzone=0.0)
    actions = []
    with StreamRecorder(KeyboardDevice(fd=slave, backend="terminal", shaping=shaping),
                        path) as rec:
        for keys in (b"\r", b"w", b"", b" a", b"q"):
            if keys:
                os.write(master, keys)
            actions.append(rec.poll({}))
    replay = ReplayDevice(path)
    assert len(replay) == 5 and replay.source == "keyboard" and replay.shaping == shaping
    for live in actions:
        again = replay.poll({})
        np.testing.assert_array_equal(again.command, live.command)
        assert again.events == live.events
    assert replay.poll({}).events == (QUIT,)  # the stream is over


def test_bad_replay_files(tmp_path):
    with pytest.raises(TeleopError, match="no such device stream"):
        ReplayDevice(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(TeleopError, match="not a device stream"):
        ReplayDevice(tmp_path / "junk.npz")
    np.savez(tmp_path / "partial.npz", motion=np.zeros((2, 6)))
    with pytest.raises(TeleopError, match="missing gripper, events, device, shaping"):
        ReplayDevice(tmp_path / "partial.npz")
    save_stream(tmp_path / "ok.npz", [Reading(np.zeros(6), 0.0)], "keyboard", Shaping())
    assert len(ReplayDevice(tmp_path / "ok.npz")) == 1
