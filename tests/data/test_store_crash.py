"""Crash safety of the episode store: a writer process SIGKILLed in the middle of an episode, and
an interrupted commit, leave every committed episode intact; the next writer trims the rest."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from robopolicy.data import store as store_mod
from robopolicy.data.store import LOCK_NAME, EpisodeStore

HELPER = Path(__file__).with_name("crash_writer.py")
_spec = importlib.util.spec_from_file_location("_crash_writer", HELPER)
cw = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cw)

K = 3  # committed episodes before the one that is killed
ENDS = np.cumsum([cw.episode_length(i) for i in range(K)])


def assert_committed(store: EpisodeStore, n_episodes: int) -> None:
    """The store holds exactly episodes 0..n_episodes-1 of crash_writer's deterministic data."""
    ends = np.cumsum([cw.episode_length(i) for i in range(n_episodes)])
    assert store.n_episodes == n_episodes
    np.testing.assert_array_equal(store.episode_ends, ends)
    assert store.n_steps == ends[-1]
    np.testing.assert_array_equal(store.meta("seed"), np.arange(n_episodes))
    for i in range(n_episodes):
        got, want = store.get_episode(i), cw.episode_data(i)
        assert sorted(got) == sorted(want)
        for key in want:
            assert got[key].dtype == want[key].dtype
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"episode {i} {key}")
    for key in store.keys:
        assert store.load(key).shape[0] == ends[-1]


def run_until_killed(path: Path, zarr_format: int, flushes: int, delay: float) -> list[int]:
    """Start the streaming child, SIGKILL it `delay` s after its `flushes`-th flush past the
    committed end; returns the sizes the child reported after each flush."""
    proc = subprocess.Popen(
        [
            sys.executable,
            str(HELPER),
            store_mod.__file__,
            "stream",
            str(path),
            str(zarr_format),
            str(K),
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(20, proc.kill)  # a hung child fails the test instead of hanging it
    watchdog.start()
    committed, flushed = [], []
    try:
        while len(flushed) < flushes:
            line = proc.stdout.readline()
            if not line:
                proc.wait()
                pytest.fail(f"writer exited early (rc {proc.returncode}): {proc.stderr.read()}")
            word, number = line.split()
            (committed if word == "committed" else flushed).append(int(number))
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        watchdog.cancel()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert committed == list(range(K))
    return flushed


@pytest.mark.parametrize(
    ("zarr_format", "flushes", "delay"),
    [(3, 1, 0.0), (3, 3, 0.03), (2, 2, 0.15)],
    ids=["v3-first-flush", "v3-third-flush+30ms", "v2-second-flush+150ms"],
)
def test_writer_killed_mid_episode(tmp_path, zarr_format, flushes, delay):
    path = tmp_path / "demo.zarr"
    flushed = run_until_killed(path, zarr_format, flushes, delay)
    assert flushed[:flushes] == [ENDS[-1] + 2 * (j + 1) for j in range(flushes)]
    assert (path / LOCK_NAME).exists()  # left behind by the killed writer, but no longer locked

    with EpisodeStore.open(path) as reader:
        assert not reader.interrupted_commit
        assert reader.keys == ["action", "img"]
        for key in reader.keys:  # the killed episode's steps are on disk past the committed end
            assert reader.array(key).shape[0] >= flushed[flushes - 1] > reader.n_steps
        assert_committed(reader, K)
        assert reader.get_steps(0, 10**9)["action"].shape[0] == ENDS[-1]
        assert reader.fps == 10.0

    # A stray temporary file as zarr leaves one when killed inside a chunk write.
    (path / "data" / "img" / "0.1f2e3d4c.partial").write_bytes(b"half a chunk")
    with EpisodeStore.open(path, mode="a") as writer:  # the kernel released the dead lock
        assert (path / LOCK_NAME).read_text() == str(os.getpid())
        for key in writer.keys:
            assert writer.array(key).shape[0] == writer.n_steps == ENDS[-1]
        assert writer._meta["seed"].shape == (K,)
        assert list(path.rglob("*.partial")) == []
        assert_committed(writer, K)
        assert writer.add_episode(cw.episode_data(K), {"seed": K}) == K
    assert not (path / LOCK_NAME).exists()

    with EpisodeStore.open(path) as reader:
        assert_committed(reader, K + 1)
        for key in reader.keys:
            assert reader.array(key).shape[0] == reader.n_steps


@pytest.mark.parametrize(("zarr_format", "pending"), [(2, 1), (3, 1), (3, 2)])
def test_interrupted_commit_is_ignored_then_trimmed(tmp_path, zarr_format, pending):
    path = tmp_path / "demo.zarr"
    with EpisodeStore.create(path, zarr_format=zarr_format) as store:
        for i in range(K):
            store.add_episode(cw.episode_data(i), {"seed": i})

    # The state a writer killed inside _commit leaves: data and metadata of `pending` new
    # episodes written, episode_ends resized (fill 0) but its new entries not written.
    root = zarr.open_group(str(path), mode="r+")
    new = [cw.episode_data(K + j) for j in range(pending)]
    for key in ("action", "img"):
        value = np.concatenate([e[key] for e in new])
        arr = root["data"][key]
        arr.resize((ENDS[-1] + len(value), *arr.shape[1:]))
        arr[ENDS[-1] :] = value
    seed = root["meta"]["seed"]
    seed.resize((K + pending,))
    seed[K:] = np.arange(K, K + pending)
    root["meta"]["episode_ends"].resize((K + pending,))
    assert root["meta"]["episode_ends"][:].tolist() == [*ENDS.tolist(), *[0] * pending]

    with EpisodeStore.open(path) as reader:
        assert reader.interrupted_commit
        assert_committed(reader, K)
        assert reader.meta("seed").tolist() == list(range(K))
        with pytest.raises(store_mod.StoreError, match=f"episode {K} out of range"):
            reader.get_episode(K)

    with EpisodeStore.open(path, mode="a") as writer:
        assert not writer.interrupted_commit
        assert writer._meta["episode_ends"].shape == (K,)
        assert writer._meta["seed"].shape == (K,)
        for key in writer.keys:
            assert writer.array(key).shape[0] == ENDS[-1]
        assert writer.add_episode(cw.episode_data(K), {"seed": K}) == K

    with EpisodeStore.open(path) as reader:
        assert not reader.interrupted_commit
        assert_committed(reader, K + 1)
