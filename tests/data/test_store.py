"""The zarr episode store: round trips in zarr v2 and v3, zarr-2 fixtures, validation, the
step-by-step writer, the one-writer lock across processes, and corrupt stores."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from robopolicy.data import store as store_mod
from robopolicy.data.store import LOCK_NAME, EpisodeStore
from robopolicy.errors import StoreError

HERE = Path(__file__).parent
FIXTURES = HERE.parent / "fixtures" / "zarr2"
HELPER = HERE / "crash_writer.py"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


content = _load("_zarr2_fixture_content", FIXTURES / "content.py")
cw = _load("_crash_writer", HELPER)

LENGTHS = [5, 9, 3]
ENDS = np.cumsum(LENGTHS)
METAS = [
    {"success": True, "seed": 11, "note": "first"},
    {},  # omits every key: gets the fill values
    {"success": True, "seed": 13, "score": 0.75},  # "score" first appears here
]
ROLES = {"ee_vel": "other"}


def make_episode(i: int, n: int) -> dict[str, np.ndarray]:
    t = np.arange(n)
    img = (np.arange(84 * 84 * 3).reshape(1, 84, 84, 3) + 13 * i + t[:, None, None, None]) % 256
    return {
        "action": (100 * i + t[:, None] + np.arange(7) / 8).astype(np.float32),
        "img": img.astype(np.uint8),
        "ee_vel": (-(t[:, None] + i) * np.array([1.0, 0.5, 0.25])).astype(np.float32),
    }


def all_data(lengths=LENGTHS) -> dict[str, np.ndarray]:
    episodes = [make_episode(i, n) for i, n in enumerate(lengths)]
    return {k: np.concatenate([e[k] for e in episodes]) for k in episodes[0]}


def build(path: Path, zarr_format: int = 3, lengths=LENGTHS, metas=None) -> EpisodeStore:
    """A writer on a new store holding episodes make_episode(i, lengths[i])."""
    store = EpisodeStore.create(
        path,
        fps=15.0,
        roles=ROLES,
        robot="franka",
        task="stack",
        source="teleop",
        zarr_format=zarr_format,
    )
    for i, n in enumerate(lengths):
        assert store.add_episode(make_episode(i, n), (metas or [{}] * len(lengths))[i]) == i
    return store


def assert_data(store: EpisodeStore, lengths) -> None:
    """The store's committed episodes are make_episode(i, lengths[i]), nothing more."""
    want = all_data(lengths)
    assert store.n_episodes == len(lengths)
    np.testing.assert_array_equal(store.episode_ends, np.cumsum(lengths))
    assert store.keys == sorted(want)
    for key, value in want.items():
        got = store.load(key)
        assert got.dtype == value.dtype
        np.testing.assert_array_equal(got, value, err_msg=key)


def lengths_on_disk(store: EpisodeStore) -> dict[str, int]:
    return {k: store.array(k).shape[0] for k in store.keys}


# ----------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_round_trip(tmp_path, zarr_format):
    path = tmp_path / "demo.zarr"
    with build(path, zarr_format, metas=METAS) as writer:
        assert writer.n_episodes == 3

    with EpisodeStore.open(path) as store:
        assert store.mode == "r"
        assert store.zarr_format == zarr_format
        assert store.n_episodes == 3
        assert store.n_steps == 17
        np.testing.assert_array_equal(store.episode_ends, [5, 14, 17])
        assert store.episode_ends.dtype == np.int64
        np.testing.assert_array_equal(store.episode_lengths, LENGTHS)
        assert_data(store, LENGTHS)
        for i, n in enumerate(LENGTHS):
            got, want = store.get_episode(i), make_episode(i, n)
            assert sorted(got) == sorted(want)
            for key in want:
                np.testing.assert_array_equal(got[key], want[key], err_msg=f"{i} {key}")
        np.testing.assert_array_equal(
            store.get_episode(-1, keys=["action"])["action"], make_episode(2, 3)["action"]
        )
        steps = store.get_steps(3, 8, keys=["action", "img"])
        assert sorted(steps) == ["action", "img"]
        np.testing.assert_array_equal(steps["img"], all_data()["img"][3:8])
        assert store.get_steps(15, 100)["ee_vel"].shape == (2, 3)  # capped at n_steps

        # per-episode metadata, with fill values where an episode gave none
        assert store.meta_keys == ["note", "score", "seed", "success"]
        assert store.meta("success").tolist() == [True, False, True]
        assert store.meta("seed").tolist() == [11, -1, 13]
        assert store.meta("note").tolist() == ["first", "", ""]
        np.testing.assert_array_equal(store.meta("score"), [np.nan, np.nan, 0.75])
        assert store.episode_meta(0) == {
            "note": "first",
            "score": pytest.approx(math.nan, nan_ok=True),
            "seed": 11,
            "success": True,
        }
        m1 = store.episode_meta(1)
        assert (m1["note"], m1["seed"], m1["success"]) == ("", -1, False)
        assert math.isnan(m1["score"])
        m2 = store.episode_meta(-1)
        assert (m2["note"], m2["seed"], m2["success"], m2["score"]) == ("", 13, True, 0.75)
        assert type(m2["seed"]) is int and type(m2["success"]) is bool
        with pytest.raises(StoreError, match="no episode metadata 'reward' \\(have: note, score"):
            store.meta("reward")

        # roles: declared ones kept, the rest by the default rule
        assert store.roles == {"action": "action", "ee_vel": "other", "img": "obs"}
        assert store.keys_with_role("obs") == ["img"]
        assert store.keys_with_role("action") == ["action"]
        assert store.info == {
            "schema_version": 1,
            "fps": 15.0,
            "robot": "franka",
            "task": "stack",
            "source": "teleop",
            "roles": {"ee_vel": "other", "action": "action", "img": "obs"},
        }
        assert store.fps == 15.0

        # chunking for the access pattern: the largest power of two of rows within 128 KiB
        # for images (84*84*3 B a frame -> 6 fit -> 4) and 1 MiB for low-dim (28 B -> 32768)
        assert store.array("img").chunks == (4, 84, 84, 3)
        assert store.array("action").chunks == (32768, 7)
        assert store.array("ee_vel").chunks == (65536, 3)

        with pytest.raises(StoreError, match="opened read-only; open with mode='a' to write"):
            store.add_episode(make_episode(3, 2))
        with pytest.raises(StoreError, match="opened read-only"):
            store.episode_writer()
        with pytest.raises(StoreError, match="episode 3 out of range \\(3 episodes\\)"):
            store.get_episode(3)
        with pytest.raises(StoreError, match="no data key 'depth' \\(keys: action, ee_vel, img\\)"):
            store.array("depth")

    attrs = zarr.open_group(str(path), mode="r").attrs["robopolicy"]
    assert (attrs["robot"], attrs["task"], attrs["source"], attrs["fps"]) == (
        "franka",
        "stack",
        "teleop",
        15.0,
    )
    files = {p.name for p in path.rglob("*")}
    assert LOCK_NAME not in files  # the writer removed its lock file on close
    if zarr_format == 2:
        assert "zarr.json" not in files
        for key in ("img", "action", "ee_vel"):
            zarray = json.loads((path / "data" / key / ".zarray").read_text())
            assert zarray["zarr_format"] == 2
            assert zarray["compressor"]["id"] == "blosc"
        assert json.loads((path / "data" / "img" / ".zarray").read_text())["chunks"][0] <= 8
    else:
        assert ".zarray" not in files
        meta = json.loads((path / "data" / "img" / "zarr.json").read_text())
        assert meta["zarr_format"] == 3
        assert "blosc" in [c["name"] for c in meta["codecs"]]


def test_default_roles_are_recorded(tmp_path):
    with EpisodeStore.create(tmp_path / "s.zarr") as store:
        store.add_episode({"action": np.zeros((2, 2)), "joint_pos": np.zeros((2, 6))})
        assert store.roles == {"action": "action", "joint_pos": "obs"}
    with EpisodeStore.open(tmp_path / "s.zarr") as store:
        assert store.info["roles"] == {"action": "action", "joint_pos": "obs"}
        assert store.array("action").dtype == np.float64
        assert store.fps is None


def test_create_rejects(tmp_path):
    path = tmp_path / "s.zarr"
    with pytest.raises(StoreError, match="role of 'img' is 'camera'; expected one of"):
        EpisodeStore.create(path, roles={"img": "camera"})
    with pytest.raises(StoreError, match="zarr_format must be 2 or 3, got 4"):
        EpisodeStore.create(path, zarr_format=4)
    assert not path.exists()
    EpisodeStore.create(path).close()
    with pytest.raises(StoreError, match="already exists; open it with mode='a' to append"):
        EpisodeStore.create(path)
    with pytest.raises(ValueError, match="mode must be 'r' or 'a', got 'w'"):
        EpisodeStore(path, mode="w")
    with EpisodeStore.create(path, overwrite=True) as store:
        store.add_episode(make_episode(0, 2))
    EpisodeStore.create(path, overwrite=True).close()  # replaces the store with an empty one
    with EpisodeStore.open(path) as store:
        assert (store.n_episodes, store.keys) == (0, [])


def test_pickle_reader_not_writer(tmp_path):
    path = tmp_path / "s.zarr"
    writer = build(path, lengths=[3, 4])
    with pytest.raises(TypeError, match="open for writing cannot be pickled"):
        pickle.dumps(writer)
    writer.close()
    with EpisodeStore.open(path) as reader:
        clone = pickle.loads(pickle.dumps(reader))
    assert_data(clone, [3, 4])
    clone.close()


# ----------------------------------------------------------------------------- zarr-2 fixtures
@pytest.mark.parametrize("name", ["dp_v2.zarr", "dp_v2.zarr.zip"])
def test_reads_zarr2_fixture(name):
    want = content.expected_arrays()
    before = sorted(p.name for p in (FIXTURES / "dp_v2.zarr").iterdir())
    with EpisodeStore.open(FIXTURES / name) as store:
        assert store.zarr_format == 2
        np.testing.assert_array_equal(store.episode_ends, content.EPISODE_ENDS)
        assert store.n_steps == 16 and store.n_episodes == 3
        assert store.keys == sorted(want)
        for key, value in want.items():
            got = store.load(key)
            assert got.dtype == value.dtype and got.shape == value.shape
            np.testing.assert_array_equal(got, value, err_msg=key)
        ep = store.get_episode(1)
        np.testing.assert_array_equal(ep["keypoint"], want["keypoint"][5:12])
        np.testing.assert_array_equal(ep["img"], want["img"][5:12])
        assert store.roles == {"action": "action", "img": "obs", "keypoint": "obs", "state": "obs"}
        assert store.fps is None
        assert store.info == {}
        assert store.meta_keys == []
        assert not store.interrupted_commit
    assert sorted(p.name for p in (FIXTURES / "dp_v2.zarr").iterdir()) == before


def test_zip_store_is_read_only():
    zip_path = FIXTURES / "dp_v2.zarr.zip"
    with pytest.raises(StoreError) as err:
        EpisodeStore.open(zip_path, mode="a")
    msg = str(err.value)
    assert "zip stores are read-only" in msg
    assert f"robopolicy data convert {zip_path} OUT.zarr" in msg


def test_append_to_zarr2_directory(tmp_path):
    path = tmp_path / "dp.zarr"
    shutil.copytree(FIXTURES / "dp_v2.zarr", path)
    want = content.expected_arrays()
    extra = {k: v[:2] + (1 if v.dtype.kind == "f" else 0) for k, v in want.items()}
    with EpisodeStore.open(path, mode="a") as store:
        assert store.add_episode(extra, {"success": True}) == 3
    with EpisodeStore.open(path) as store:
        assert store.zarr_format == 2
        np.testing.assert_array_equal(store.episode_ends, [5, 12, 16, 18])
        for key in want:
            np.testing.assert_array_equal(
                store.load(key), np.concatenate([want[key], extra[key]]), err_msg=key
            )
        assert store.meta("success").tolist() == [False, False, False, True]
    assert not list(path.rglob("zarr.json"))


# ----------------------------------------------------------------------------- validation
def _missing(ep):
    del ep["img"]


def _extra(ep):
    ep["force"] = np.zeros((4, 6), np.float32)


def _shape(ep):
    ep["action"] = ep["action"][:, :6]


def _lengths(ep):
    ep["action"] = ep["action"][:3]


def _nan(ep):
    ep["action"][2, 5] = np.nan


def _inf(ep):
    ep["ee_vel"][3, 0] = -np.inf


def _dtype(ep):
    ep["img"] = ep["img"].astype(np.float32)


def _empty(ep):
    for key in ep:
        ep[key] = ep[key][:0]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_missing, "episode keys differ from the store's (missing: ['img'], unexpected: none)"),
        (_extra, "episode keys differ from the store's (missing: none, unexpected: ['force'])"),
        (_shape, "'action' has step shape (6,), the store has (7,)"),
        (
            _lengths,
            "episode arrays need equal, non-zero lengths; got {'action': 3, 'img': 4, 'ee_vel': 4}",
        ),
        (_nan, "'action' has NaN or Inf at step 2 of the episode"),
        (_inf, "'ee_vel' has NaN or Inf at step 3 of the episode"),
        (_dtype, "'img' has dtype float32, the store has uint8"),
        (_empty, "episode arrays need equal, non-zero lengths"),
    ],
    ids=["missing", "extra", "shape", "lengths", "nan", "inf", "dtype", "empty"],
)
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_add_episode_rejects_and_keeps_saved(tmp_path, zarr_format, mutate, message):
    path = tmp_path / "s.zarr"
    with build(path, zarr_format, lengths=[5, 9], metas=METAS[:2]) as store:
        episode = make_episode(2, 4)
        mutate(episode)
        with pytest.raises(StoreError) as err:
            store.add_episode(episode, {"seed": 99})
        assert message in str(err.value)
        assert str(err.value).startswith(f"{path}: ")
        assert "\n" not in str(err.value)
        assert_data(store, [5, 9])
        assert lengths_on_disk(store) == {"action": 14, "ee_vel": 14, "img": 14}
        assert store.meta("seed").tolist() == [11, -1]
        # the store still takes a good episode after the rejected one
        assert store.add_episode(make_episode(2, 4), {"seed": 7}) == 2
    with EpisodeStore.open(path) as store:
        assert_data(store, [5, 9, 4])
        assert store.meta("seed").tolist() == [11, -1, 7]


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"seed": "abc"}, "metadata 'seed' of dtype <U3 does not fit the store's int64"),
        ({"seed": 1.7}, "metadata 'seed' of dtype float64 does not fit the store's int64"),
        ({"success": 5}, "metadata 'success' of dtype int64 does not fit the store's bool"),
        ({"success": True, "bad name": 1}, "bad episode metadata name 'bad name'"),
        ({"episode_ends": 3}, "bad episode metadata name 'episode_ends'"),
        (
            {"note": "ok", "pose": [0.1, 0.2]},
            "metadata 'pose' needs one scalar per episode (1); got values of shape (1, 2)",
        ),
    ],
    ids=["wrong-type", "lossy-float", "int-as-bool", "bad-name", "reserved-name", "not-scalar"],
)
def test_add_episode_rejects_bad_metadata(tmp_path, meta, message):
    path = tmp_path / "s.zarr"
    with build(path, lengths=[5, 9], metas=METAS[:2]) as store:
        with pytest.raises(StoreError) as err:
            store.add_episode(make_episode(2, 4), meta)
        assert message in str(err.value)
        assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)
        assert store.meta_keys == ["note", "seed", "success"]  # no array made for 'pose'
        assert {k: store._meta[k].shape for k in store.meta_keys} == {
            "note": (2,),
            "seed": (2,),
            "success": (2,),
        }  # nothing written for the episode
        assert_data(store, [5, 9])
        assert store.add_episode(make_episode(2, 3), {"seed": 7}) == 2
    with EpisodeStore.open(path) as store:
        assert_data(store, [5, 9, 3])
        assert store.meta("seed").tolist() == [11, -1, 7]
        assert store.meta("note").tolist() == ["first", "", ""]
        assert store.meta("success").tolist() == [True, False, False]


def test_first_episode_is_validated_too(tmp_path):
    with EpisodeStore.create(tmp_path / "s.zarr") as store:
        with pytest.raises(StoreError, match="an episode needs at least one data key"):
            store.add_episode({})
        bad = make_episode(0, 6)
        bad["action"][4, 0] = np.nan
        with pytest.raises(StoreError, match="'action' has NaN or Inf at step 4"):
            store.add_episode(bad)
        assert store.n_episodes == 0
        assert store.keys == []  # nothing was created for the rejected episode


def test_add_episodes_lengths_must_sum(tmp_path):
    with build(tmp_path / "s.zarr", lengths=[2]) as store:
        data = {k: v[:0] for k, v in make_episode(0, 0).items()}
        block = all_data([0, 4, 5])  # two episodes back to back (the 0 is a no-op here)
        data = {k: v[0:9] for k, v in block.items()}
        with pytest.raises(
            StoreError,
            match=r"episode lengths \[4, 4\] must be positive and "
            r"sum to the 9 steps given",
        ):
            store.add_episodes(data, [4, 4])
        with pytest.raises(StoreError, match=r"episode lengths \[9, 0\] must be positive"):
            store.add_episodes(data, [9, 0])
        assert store.add_episodes(data, [4, 5], {"seed": [1, 2]}) == range(1, 3)
        np.testing.assert_array_equal(store.episode_ends, [2, 6, 11])
        assert store.meta("seed").tolist() == [-1, 1, 2]


# ----------------------------------------------------------------------------- episode writer
def stream(writer, episode: dict[str, np.ndarray]) -> None:
    for t in range(len(episode["action"])):
        writer.append({k: v[t] for k, v in episode.items()})


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_episode_writer_commit(tmp_path, zarr_format):
    path = tmp_path / "s.zarr"
    with build(path, zarr_format, lengths=[5]) as store:
        episode = make_episode(1, 8)
        writer = store.episode_writer(flush_every=3)
        assert writer.start == 5
        stream(writer, {k: v[:7] for k, v in episode.items()})
        assert len(writer) == 7
        # two blocks of 3 are on disk past the committed end; the episode is not committed
        assert lengths_on_disk(store) == {"action": 11, "ee_vel": 11, "img": 11}
        assert store.n_episodes == 1
        with EpisodeStore.open(path) as reader:
            assert_data(reader, [5])
        stream(writer, {k: v[7:] for k, v in episode.items()})
        assert writer.commit({"success": True}) == 1
        assert lengths_on_disk(store) == {"action": 13, "ee_vel": 13, "img": 13}
        with pytest.raises(StoreError, match="already committed or discarded"):
            writer.append({k: v[0] for k, v in episode.items()})
    with EpisodeStore.open(path) as store:
        assert_data(store, [5, 8])
        assert store.meta("success").tolist() == [False, True]


def test_episode_writer_on_empty_store(tmp_path):
    path = tmp_path / "s.zarr"
    with (
        EpisodeStore.create(path, roles=ROLES) as store,
        store.episode_writer(flush_every=2) as writer,
    ):
        stream(writer, make_episode(0, 5))
        assert writer.commit() == 0
    with EpisodeStore.open(path) as store:
        assert_data(store, [5])
        assert store.roles == {"action": "action", "ee_vel": "other", "img": "obs"}


def test_episode_writer_discard(tmp_path):
    path = tmp_path / "s.zarr"
    with build(path, lengths=[5, 2]) as store:
        writer = store.episode_writer(flush_every=2)
        stream(writer, make_episode(2, 5))
        assert lengths_on_disk(store)["img"] == 11
        writer.discard()
        assert lengths_on_disk(store) == {"action": 7, "ee_vel": 7, "img": 7}
        assert_data(store, [5, 2])
        with pytest.raises(StoreError, match="this episode was already committed or discarded"):
            writer.append({k: v[0] for k, v in make_episode(2, 1).items()})
        assert store.add_episode(make_episode(2, 3)) == 2
    with EpisodeStore.open(path) as store:
        assert_data(store, [5, 2, 3])


def test_episode_writer_context_requires_commit(tmp_path):
    path = tmp_path / "s.zarr"
    with build(path, lengths=[4]) as store:
        with (
            pytest.raises(
                StoreError,
                match="episode writer closed without commit\\(\\); its steps were discarded",
            ),
            store.episode_writer(flush_every=2) as writer,
        ):
            stream(writer, make_episode(1, 5))
        assert lengths_on_disk(store) == {"action": 4, "ee_vel": 4, "img": 4}
        with (
            pytest.raises(RuntimeError, match="robot e-stop"),  # the user's error, not ours
            store.episode_writer(flush_every=2) as writer,
        ):
            stream(writer, make_episode(1, 5))
            raise RuntimeError("robot e-stop")
        assert lengths_on_disk(store) == {"action": 4, "ee_vel": 4, "img": 4}
        assert_data(store, [4])
    with EpisodeStore.open(path) as store:
        assert_data(store, [4])


def test_episode_writer_rejects_bad_steps(tmp_path):
    with build(tmp_path / "s.zarr", lengths=[4]) as store:
        episode = make_episode(1, 6)
        episode["action"][4, 2] = np.nan
        with (
            pytest.raises(StoreError, match="'action' has NaN or Inf at step 4 of the episode"),
            store.episode_writer(flush_every=2) as writer,
        ):
            stream(writer, episode)
        with (
            pytest.raises(
                StoreError,
                match=r"step 1 has keys \['action'\], earlier steps had "
                r"\['action', 'ee_vel', 'img'\]",
            ),
            store.episode_writer(flush_every=4) as writer,
        ):
            writer.append({k: v[0] for k, v in episode.items()})
            writer.append({"action": episode["action"][1]})
        with (
            pytest.raises(StoreError, match="steps disagree in shape"),
            store.episode_writer(flush_every=4) as writer,
        ):
            writer.append({k: v[0] for k, v in episode.items()})
            writer.append({**{k: v[1] for k, v in episode.items()}, "action": np.zeros(6)})
            writer.flush()
        with pytest.raises(StoreError, match="cannot commit an empty episode"):
            store.episode_writer().commit()
        assert_data(store, [4])
        assert lengths_on_disk(store) == {"action": 4, "ee_vel": 4, "img": 4}


def test_drop_last_episode(tmp_path):
    path = tmp_path / "s.zarr"
    with build(path, lengths=LENGTHS, metas=METAS) as store:
        store.drop_last_episode()
        assert_data(store, LENGTHS[:2])
        assert lengths_on_disk(store) == {"action": 14, "ee_vel": 14, "img": 14}
        assert {k: store._meta[k].shape[0] for k in store.meta_keys} == {
            "note": 2,
            "score": 2,
            "seed": 2,
            "success": 2,
        }
    with EpisodeStore.open(path) as store:
        assert_data(store, LENGTHS[:2])
        assert store.meta("seed").tolist() == [11, -1]
    with EpisodeStore.open(path, mode="a") as store:
        assert store.add_episode(make_episode(2, 6), {"seed": 5}) == 2
        assert store.meta("score")[2] != store.meta("score")[2]  # NaN fill, not the old 0.75
        store.drop_last_episode()
        store.drop_last_episode()
        store.drop_last_episode()
        assert (store.n_episodes, store.n_steps) == (0, 0)
        assert lengths_on_disk(store) == {"action": 0, "ee_vel": 0, "img": 0}
        with pytest.raises(StoreError, match="no episode to drop"):
            store.drop_last_episode()
    with EpisodeStore.open(path) as reader:
        assert (reader.n_episodes, reader.n_steps) == (0, 0)


# ----------------------------------------------------------------------------- one writer
def helper(*args: str, timeout: float = 20) -> str:
    out = subprocess.run(
        [sys.executable, str(HELPER), store_mod.__file__, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_second_writer_in_another_process_is_refused(tmp_path):
    path = tmp_path / "s.zarr"
    with EpisodeStore.create(path) as writer:
        writer.add_episode(cw.episode_data(0))  # 4 steps
        out = helper("contend", str(path))
        assert (
            f"refused: {path}: already open for writing by another process "
            f"(pid {os.getpid()}); close that writer first (readers are fine)"
        ) in out
        assert "reader 1 4" in out  # a reader in that process works meanwhile
        assert "appended" not in out
        # a second writer in this process is refused too (flock is per open file)
        with pytest.raises(
            StoreError, match=f"already open for writing by another process \\(pid {os.getpid()}\\)"
        ):
            EpisodeStore.open(path, mode="a")
        assert writer.add_episode(cw.episode_data(1)) == 1  # 7 steps
    out = helper("contend", str(path))  # the lock is free now: this one appends episode 2
    assert out.splitlines() == ["appended 2", "reader 3 21"]
    with EpisodeStore.open(path) as store:
        np.testing.assert_array_equal(store.episode_ends, [4, 11, 21])
        for i in range(3):
            for key, value in cw.episode_data(i).items():
                np.testing.assert_array_equal(store.get_episode(i)[key], value)


def test_killed_writer_releases_lock(tmp_path):
    path = tmp_path / "s.zarr"
    build(path, lengths=[5]).close()
    proc = subprocess.Popen(
        [sys.executable, str(HELPER), store_mod.__file__, "hold", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line == "locked\n", line if line else proc.stderr.read()
        with pytest.raises(
            StoreError, match=f"already open for writing by another process \\(pid {proc.pid}\\)"
        ):
            EpisodeStore.open(path, mode="a")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert (path / LOCK_NAME).read_text() == str(proc.pid)  # stale file, lock gone with process
    with EpisodeStore.open(path, mode="a") as store:
        assert (path / LOCK_NAME).read_text() == str(os.getpid())
        assert store.add_episode(make_episode(1, 3)) == 1
    assert not (path / LOCK_NAME).exists()
    with EpisodeStore.open(path) as store:
        assert_data(store, [5, 3])


# ----------------------------------------------------------------------------- corrupt stores
def _no_episode_ends(path: Path) -> None:
    shutil.rmtree(path / "meta" / "episode_ends")


def _not_increasing(path: Path) -> None:
    ends = zarr.open_group(str(path), mode="r+")["meta"]["episode_ends"]
    ends.resize((3,))
    ends[:] = [5, 3, 10]


def _truncated(path: Path) -> None:
    action = zarr.open_group(str(path), mode="r+")["data"]["action"]
    action.resize((7, 7))


def _future_schema(path: Path) -> None:
    root = zarr.open_group(str(path), mode="r+")
    root.attrs["robopolicy"] = {**root.attrs["robopolicy"], "schema_version": 99}


def _no_data_group(path: Path) -> None:
    shutil.rmtree(path / "data")


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (_no_episode_ends, "missing meta/episode_ends (not an episode store)"),
        (_not_increasing, "meta/episode_ends is not strictly increasing: entry 1 is 3 after 5"),
        (_truncated, "data/action has 7 steps but episode_ends ends at 10 (truncated array)"),
        (
            _future_schema,
            "schema version 99 is not supported (this robopolicy reads (1,)); upgrade robopolicy",
        ),
        (_no_data_group, "missing group 'data' (not an episode store)"),
    ],
    ids=["no-episode-ends", "not-increasing", "truncated", "future-schema", "no-data-group"],
)
@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("mode", ["r", "a"])
def test_corrupt_store(tmp_path, zarr_format, corrupt, message, mode):
    path = tmp_path / "s.zarr"
    build(path, zarr_format, lengths=[4, 6]).close()
    corrupt(path)
    for _ in range(2):  # a failed writer open releases its lock: the second try says the same
        with pytest.raises(StoreError) as err:
            EpisodeStore.open(path, mode=mode)
        assert str(err.value) == f"{path}: {message}"
    assert not (path / LOCK_NAME).exists()


def test_not_a_store(tmp_path):
    with pytest.raises(StoreError) as err:
        EpisodeStore.open(tmp_path / "nowhere.zarr")
    assert str(err.value) == f"{tmp_path / 'nowhere.zarr'}: no such store"
    with pytest.raises(StoreError, match="nowhere.zarr: no such store"):
        EpisodeStore.open(tmp_path / "nowhere.zarr", mode="a")
    assert not (tmp_path / "nowhere.zarr").exists()

    plain = tmp_path / "photos"
    plain.mkdir()
    (plain / "cat.jpg").write_bytes(b"\xff\xd8\xff")
    for mode in ("r", "a"):
        with pytest.raises(StoreError) as err:
            EpisodeStore.open(plain, mode=mode)
        msg = str(err.value)
        assert msg.startswith(f"{plain}: not a readable zarr store (")
        assert "\n" not in msg
    assert sorted(p.name for p in plain.iterdir()) == ["cat.jpg"]

    not_zip = tmp_path / "demo.zarr.zip"
    not_zip.write_bytes(b"this is not a zip file")
    with pytest.raises(StoreError) as err:
        EpisodeStore.open(not_zip)
    assert str(err.value).startswith(f"{not_zip}: not a readable zarr store (")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("zarr_format", "meta_file", "field", "bad", "shown"), [
    (3, "zarr.json", "data_type", "float1024", "'float1024'"),
    (2, ".zarray", "dtype", "<f1024", "{'name': '<f1024', 'object_codec_id': None}"),
])
@pytest.mark.parametrize("key", ["data/ee_vel", "meta/episode_ends"])
@pytest.mark.parametrize("mode", ["r", "a"])
def test_unreadable_dtype_names_key_and_dtype(tmp_path, zarr_format, meta_file, field, bad,
                                             shown, key, mode):
    path = tmp_path / "s.zarr"
    build(path, zarr_format, lengths=[4, 6]).close()
    doc_path = path / key / meta_file
    doc = json.loads(doc_path.read_text())
    doc[field] = bad
    doc_path.write_text(json.dumps(doc))
    with pytest.raises(StoreError) as err:
        EpisodeStore.open(path, mode=mode)
    assert str(err.value) == (f"{path}: {key} cannot be read: No Zarr data type found that "
                              f"matches {shown} (corrupt metadata, or written by a newer zarr)")
    assert not (path / LOCK_NAME).exists()
