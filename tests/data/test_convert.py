"""Conversion into episode stores: robomimic HDF5 written with real h5py, and the zarr-2 fixture
stores written by real zarr 2; every value read back is compared with its source."""

import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

from robopolicy.data import convert as convert_module
from robopolicy.data.convert import convert, convert_robomimic, convert_zarr
from robopolicy.data.store import EpisodeStore
from robopolicy.data.validate import validate_store
from robopolicy.errors import StoreError

sys.path.insert(0, str(Path(__file__).parents[1] / "fixtures" / "zarr2"))
from content import EPISODE_ENDS, expected_arrays  # noqa: E402

FIXTURES = Path(__file__).parents[1] / "fixtures" / "zarr2"
N_DEMOS = 12
OBS_KEYS = ("robot0_eef_pos", "object", "agentview_image")
ENV_ARGS = {"env_name": "Lift", "type": 1,
            "env_kwargs": {"robots": ["Panda"], "control_freq": 20}}


def demo_arrays(n: int) -> dict[str, np.ndarray]:
    """Deterministic arrays of demo_<n>; its length depends on n so order mistakes show."""
    rng = np.random.default_rng(n)
    length = 3 + (n * 5) % 7
    return {
        "actions": rng.uniform(-1, 1, (length, 7)),
        "rewards": rng.uniform(0, 1, length),
        "dones": (np.arange(length) == length - 1).astype(np.int64),
        "states": rng.normal(size=(length, 9)),
        "obs/robot0_eef_pos": rng.normal(size=(length, 3)),
        "obs/object": rng.normal(size=(length, 10)),
        "obs/agentview_image": rng.integers(0, 256, (length, 84, 84, 3), dtype=np.uint8),
    }


def write_robomimic(path: Path, n_demos: int = N_DEMOS) -> Path:
    """A robomimic-layout file; demos are created in shuffled order."""
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps(ENV_ARGS)
        for n in np.random.default_rng(0).permutation(n_demos):
            demo = data.create_group(f"demo_{n}")
            for name, value in demo_arrays(int(n)).items():
                demo.create_dataset(name, data=value)
            demo.attrs["num_samples"] = len(value)
        names = [f"demo_{n}".encode() for n in range(n_demos)]
        f.create_dataset("mask/train", data=np.array(names[:-2], dtype="S"))
        f.create_dataset("mask/valid", data=np.array(names[-2:], dtype="S"))
    return path


@pytest.fixture(scope="module")
def robomimic_store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("robomimic")
    src = write_robomimic(tmp / "lift_ph.hdf5")
    with pytest.MonkeyPatch.context() as mp:
        # Small write blocks, so demos are appended a few at a time over several blocks.
        mp.setattr(convert_module, "COPY_BLOCK_BYTES", 300_000)
        return convert_robomimic(src, tmp / "lift.zarr", progress=False)


def test_robomimic_values_equal_source_in_numeric_demo_order(robomimic_store):
    with EpisodeStore.open(robomimic_store) as store:
        assert store.n_episodes == N_DEMOS
        assert store.meta("demo").tolist() == list(range(N_DEMOS))
        assert store.episode_lengths.tolist() == [len(demo_arrays(n)["actions"])
                                                  for n in range(N_DEMOS)]
        for i in range(N_DEMOS):
            episode, source = store.get_episode(i), demo_arrays(i)
            np.testing.assert_array_equal(episode["action"], source["actions"])
            np.testing.assert_array_equal(episode["reward"], source["rewards"])
            np.testing.assert_array_equal(episode["done"], source["dones"])
            np.testing.assert_array_equal(episode["state"], source["states"])
            for key in OBS_KEYS:
                np.testing.assert_array_equal(episode[key], source[f"obs/{key}"])


def test_robomimic_masks_roles_and_attrs(robomimic_store):
    with EpisodeStore.open(robomimic_store) as store:
        assert store.meta("mask_train").tolist() == [True] * 10 + [False] * 2
        assert store.meta("mask_valid").tolist() == [False] * 10 + [True] * 2
        assert store.meta("mask_train").dtype == np.bool_
        assert store.roles == {"action": "action", "agentview_image": "obs", "done": "other",
                               "object": "obs", "reward": "other", "robot0_eef_pos": "obs",
                               "state": "other"}
        assert (store.info["task"], store.info["robot"], store.fps) == ("Lift", "Panda", 20)
        assert store.info["source"] == "robomimic:lift_ph.hdf5"
        assert store.root.attrs["robomimic"] == {"env_args": ENV_ARGS}
        assert store.zarr_format == 3


def test_robomimic_store_validates_clean(robomimic_store):
    assert validate_store(robomimic_store) == []


def test_robomimic_detected_by_content_without_extension(tmp_path):
    src = write_robomimic(tmp_path / "demos.bin", n_demos=2)
    dst = convert(src, tmp_path / "out.zarr", progress=False)
    with EpisodeStore.open(dst) as store:
        assert store.meta("demo").tolist() == [0, 1]


def test_robomimic_demo_with_unequal_lengths_is_refused(tmp_path):
    src = write_robomimic(tmp_path / "bad.hdf5", n_demos=3)
    with h5py.File(src, "a") as f:
        del f["data/demo_1/rewards"]
        f["data/demo_1"].create_dataset("rewards", data=np.zeros(2))
    with pytest.raises(StoreError, match=r"bad.hdf5: data/demo_1 datasets need equal, non-zero "
                                         r"lengths; got \{.*'reward': 2"):
        convert(src, tmp_path / "out.zarr", progress=False)
    assert not (tmp_path / "out.zarr").exists()


def test_robomimic_without_data_group_is_refused(tmp_path):
    with h5py.File(tmp_path / "bad.hdf5", "w") as f:
        f.create_dataset("x", data=[1, 2])
    with pytest.raises(StoreError, match=r"bad.hdf5: no 'data' group \(not a robomimic file\)"):
        convert(tmp_path / "bad.hdf5", tmp_path / "out.zarr", progress=False)
    assert list(tmp_path.iterdir()) == [tmp_path / "bad.hdf5"]  # no partial output left


@pytest.mark.parametrize("name", ["dp_v2.zarr", "dp_v2.zarr.zip"])
def test_zarr2_fixture_to_v3(tmp_path, name):
    dst = convert(FIXTURES / name, tmp_path / "out.zarr", progress=False)
    assert (dst / "zarr.json").is_file()
    with EpisodeStore.open(dst) as store:
        assert store.zarr_format == 3
        np.testing.assert_array_equal(store.episode_ends, EPISODE_ENDS)
        expected = expected_arrays()
        assert store.keys == sorted(expected)
        for key, value in expected.items():
            loaded = store.load(key)
            assert loaded.dtype == value.dtype
            np.testing.assert_array_equal(loaded, value)
        assert store.info["source"] == f"convert:{name}"
        assert store.roles == {"action": "action", "img": "obs", "keypoint": "obs",
                               "state": "obs"}
    assert validate_store(dst) == []


def test_zarr_format_2_output(tmp_path):
    dst = convert(FIXTURES / "dp_v2.zarr", tmp_path / "v2.zarr", zarr_format=2, progress=False)
    assert (dst / "data" / "action" / ".zarray").is_file()
    assert not (dst / "zarr.json").exists()
    group = zarr.open_group(str(dst), mode="r")
    assert group.metadata.zarr_format == 2
    for key, value in expected_arrays().items():
        np.testing.assert_array_equal(group["data"][key][:], value)
    np.testing.assert_array_equal(group["meta/episode_ends"][:], EPISODE_ENDS)


def test_convert_zarr_copies_meta_attrs_across_blocks(tmp_path, monkeypatch):
    # Small copy blocks so several blocks of whole episodes are used.
    monkeypatch.setattr(convert_module, "COPY_BLOCK_BYTES", 100)
    src = tmp_path / "src.zarr"
    with EpisodeStore.create(src, fps=15.0, roles={"x": "obs", "a": "action", "r": "other"},
                             robot="ur5", task="stack", source="teleop") as store:
        store.root.attrs["lab"] = {"site": "b"}
        for i in range(9):
            n = 2 + i % 4
            store.add_episode({"x": np.full((n, 3), i, np.float32),
                               "a": np.arange(n, dtype=np.float64) + i, "r": np.ones(n)},
                              {"success": i % 2 == 0, "seed": np.int64(100 + i)})
        ends = store.episode_ends
    dst = convert_zarr(src, tmp_path / "dst.zarr", progress=False)
    with EpisodeStore.open(src) as a, EpisodeStore.open(dst) as b:
        np.testing.assert_array_equal(b.episode_ends, ends)
        for key in a.keys:
            np.testing.assert_array_equal(b.load(key), a.load(key))
        for name in ("success", "seed"):
            np.testing.assert_array_equal(b.meta(name), a.meta(name))
            assert b.meta(name).dtype == a.meta(name).dtype
        assert b.roles == a.roles
        assert {k: b.info[k] for k in ("fps", "robot", "task", "source")} == \
            {"fps": 15.0, "robot": "ur5", "task": "stack", "source": "teleop"}
        assert b.root.attrs["lab"] == {"site": "b"}


def test_existing_dst_is_refused_and_untouched(tmp_path):
    dst = tmp_path / "taken.zarr"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(StoreError, match="taken.zarr: already exists; choose a new output path"):
        convert(FIXTURES / "dp_v2.zarr", dst, progress=False)
    assert [p.name for p in dst.iterdir()] == ["keep.txt"]
    assert (dst / "keep.txt").read_text() == "mine"


def test_failed_conversion_leaves_nothing(tmp_path):
    src = tmp_path / "notastore"
    src.mkdir()
    with pytest.raises(StoreError, match="not a readable zarr store"):
        convert(src, tmp_path / "out.zarr", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notastore"]
