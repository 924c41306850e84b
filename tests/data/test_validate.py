"""validate_store: a sound store passes; each kind of damage, built with raw zarr, is reported
in one line naming the key and, where there is one, the fix."""

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from robopolicy.data import validate
from robopolicy.data.store import EpisodeStore
from robopolicy.data.validate import validate_store

FIXTURES = Path(__file__).parents[1] / "fixtures" / "zarr2"
LENGTHS = (5, 7, 4)  # ends 5, 12, 16


def make_store(path: Path) -> Path:
    """A sound v3 store: three episodes of action, state and an image, with success meta."""
    with EpisodeStore.create(path, fps=10, roles={"action": "action", "state": "obs"},
                             robot="panda", task="push") as store:
        step = 0
        for i, n in enumerate(LENGTHS):
            t = np.arange(step, step + n, dtype=np.float32)
            store.add_episode({"action": np.stack([t, -t], 1), "state": t[:, None] * 0.5,
                               "img": np.zeros((n, 4, 4, 3), np.uint8)}, {"success": i != 1})
            step += n
    return path


def raw(path: Path) -> zarr.Group:
    return zarr.open_group(str(path), mode="r+")


def only(problems: list[str]) -> str:
    assert len(problems) == 1, problems
    return problems[0]


def test_sound_store_has_no_problems(tmp_path):
    assert validate_store(make_store(tmp_path / "s.zarr")) == []


def test_fresh_empty_store_with_declared_roles_is_sound(tmp_path):
    EpisodeStore.create(tmp_path / "e.zarr", roles={"action": "action"}).close()
    assert validate_store(tmp_path / "e.zarr") == []


@pytest.mark.parametrize("name", ["dp_v2.zarr", "dp_v2.zarr.zip"])
def test_zarr2_fixtures_are_sound(name):
    assert validate_store(FIXTURES / name) == []


def test_missing_path(tmp_path):
    msg = only(validate_store(tmp_path / "nope.zarr"))
    assert "nope.zarr: no such file or directory" in msg


@pytest.mark.parametrize("kind", ["empty dir", "text file", "array at root"])
def test_not_a_zarr_store(tmp_path, kind):
    path = tmp_path / "x"
    if kind == "empty dir":
        path.mkdir()
    elif kind == "text file":
        path.write_text("hello")
    else:
        zarr.create_array(str(path), shape=(3,), dtype="int64")
    msg = only(validate_store(path))
    if kind == "text file":
        assert msg == (f"{path}: not a zarr store (a file that is not a zip archive; stores "
                       "are directories or .zarr.zip files)")
    else:
        assert msg.startswith(f"{path}: not a readable zarr store (")


@pytest.mark.parametrize("group", ["data", "meta"])
def test_missing_group(tmp_path, group):
    root = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    other = "meta" if group == "data" else "data"
    root.create_group(other)
    if other == "meta":
        root.create_array("meta/episode_ends", data=np.array([3], dtype=np.int64))
    assert validate_store(tmp_path / "g.zarr") == [
        f"{tmp_path / 'g.zarr'}: missing group '{group}' (not an episode store in the "
        "diffusion-policy layout: data/<key> arrays and meta/episode_ends)"]


def test_missing_episode_ends(tmp_path):
    path = make_store(tmp_path / "s.zarr")
    del raw(path)["meta/episode_ends"]
    assert "missing meta/episode_ends" in only(validate_store(path))


@pytest.mark.parametrize(("ends", "expected"), [
    (np.array([[5, 12]], dtype=np.int64), "meta/episode_ends has shape (1, 2); it must be 1-D"),
    (np.array([5.0, 12.0, 16.0]), "meta/episode_ends has dtype float64; it must be an integer"),
    (np.array([5, 3, 16], dtype=np.int64),
     "meta/episode_ends is not strictly increasing: entry 1 is 3 after 5"),
])
def test_bad_episode_ends(tmp_path, ends, expected):
    path = make_store(tmp_path / "s.zarr")
    meta = raw(path)["meta"]
    del meta["episode_ends"]
    meta.create_array("episode_ends", data=ends)
    assert expected in only(validate_store(path))


def test_interrupted_commit_says_repair(tmp_path):
    path = make_store(tmp_path / "s.zarr")
    root = raw(path)
    root["meta/episode_ends"].resize((4,))  # resized, crash before the end was written
    msg = only(validate_store(path))
    assert "meta/episode_ends has an unwritten last slot" in msg
    assert f"run `robopolicy data repair {path}` to trim it" in msg


def test_uncommitted_data_tail_says_repair(tmp_path):
    path = make_store(tmp_path / "s.zarr")
    raw(path)["data/action"].resize((19, 2))
    msg = only(validate_store(path))
    assert "data/action has 19 steps, 3 past the last episode end 16" in msg
    assert f"run `robopolicy data repair {path}` to trim it" in msg


def test_truncated_data_array(tmp_path):
    path = make_store(tmp_path / "s.zarr")
    raw(path)["data/state"].resize((10, 1))
    msg = only(validate_store(path))
    assert "data/state has 10 steps but meta/episode_ends ends at 16 (truncated array" in msg


@pytest.mark.parametrize(("length", "expected"), [
    (2, "meta/success has 2 entries for 3 episodes (per-episode metadata must have one"),
    (4, "meta/success has 4 entries for 3 episodes (uncommitted tail"),
])
def test_meta_length_differs(tmp_path, length, expected):
    path = make_store(tmp_path / "s.zarr")
    raw(path)["meta/success"].resize((length,))
    msg = only(validate_store(path))
    assert expected in msg
    assert ("robopolicy data repair" in msg) == (length > 3)


def test_nan_in_float_data_names_key_and_step(tmp_path):
    path = make_store(tmp_path / "s.zarr")
    raw(path)["data/action"][7, 1] = np.nan
    msg = only(validate_store(path))
    assert "data/action has NaN or Inf at step 7 (episode 1, its step 2)" in msg


def _set_dtype(path: Path, key: str, dtype: str) -> None:
    """Write a dtype no zarr knows into array ``key``'s zarr.json."""
    meta_file = path / key / "zarr.json"
    doc = json.loads(meta_file.read_text())
    doc["data_type"] = dtype
    meta_file.write_text(json.dumps(doc))


def test_unreadable_dtype_is_named_and_the_rest_still_checked(tmp_path):
    path = make_store(tmp_path / "s.zarr")
    raw(path)["data/action"][7, 1] = np.nan
    _set_dtype(path, "data/state", "float1024")
    # state keeps its declared role: no "roles name a missing key" line for an unreadable one
    assert validate_store(path) == [
        f"{path}: data/state cannot be read: No Zarr data type found that matches "
        "'float1024' (corrupt metadata, or written by a newer zarr)",
        f"{path}: data/action has NaN or Inf at step 7 (episode 1, its step 2); fix or drop "
        "that episode before training",
    ]


def test_unreadable_episode_ends_dtype(tmp_path):
    path = make_store(tmp_path / "s.zarr")
    _set_dtype(path, "meta/episode_ends", "int1024")
    assert validate_store(path) == [
        f"{path}: meta/episode_ends cannot be read: No Zarr data type found that matches "
        "'int1024' (corrupt metadata, or written by a newer zarr)"]


def test_inf_found_in_a_later_scan_block(tmp_path, monkeypatch):
    # Tiny scan blocks so the bad step lies past the first block read.
    monkeypatch.setattr(validate, "SCAN_BLOCK_BYTES", 1)
    root = zarr.open_group(str(tmp_path / "c.zarr"), mode="w")
    values = np.zeros((40, 3), np.float32)
    values[33, 0] = np.inf
    root.create_array("data/x", data=values, chunks=(4, 3))
    root.create_array("meta/episode_ends", data=np.array([20, 40], dtype=np.int64))
    msg = only(validate_store(tmp_path / "c.zarr"))
    assert "data/x has NaN or Inf at step 33 (episode 1, its step 13)" in msg


def test_uncommitted_nan_is_not_reported_as_nan(tmp_path):
    path = make_store(tmp_path / "s.zarr")
    arr = raw(path)["data/action"]
    arr.resize((18, 2))
    arr[16:18] = np.nan  # past the last end: readers ignore it, repair trims it
    msg = only(validate_store(path))
    assert "past the last episode end" in msg


def test_unknown_schema_version(tmp_path):
    path = make_store(tmp_path / "s.zarr")
    root = raw(path)
    root.attrs["robopolicy"] = {**root.attrs["robopolicy"], "schema_version": 99}
    msg = only(validate_store(path))
    assert "attrs['robopolicy']['schema_version'] is 99" in msg
    assert "supported: (1,)" in msg


def test_unknown_role_and_role_for_missing_key(tmp_path):
    path = make_store(tmp_path / "s.zarr")
    root = raw(path)
    info = root.attrs["robopolicy"]
    root.attrs["robopolicy"] = {**info, "roles": {**info["roles"], "state": "observation",
                                                 "gripper": "obs"}}
    problems = validate_store(path)
    assert len(problems) == 2, problems
    assert "gives data/state the role 'observation'; expected one of obs, action, other" \
        in problems[1]
    assert "names data/gripper, which does not exist (keys: action, img, state)" in problems[0]


def test_bad_fps(tmp_path):
    path = make_store(tmp_path / "s.zarr")
    root = raw(path)
    root.attrs["robopolicy"] = {**root.attrs["robopolicy"], "fps": -5}
    assert "attrs['robopolicy']['fps'] is -5" in only(validate_store(path))


def test_several_problems_are_all_listed(tmp_path):
    path = make_store(tmp_path / "s.zarr")
    root = raw(path)
    root["data/action"][0, 0] = np.nan
    root["data/state"].resize((20, 1))
    root.attrs["robopolicy"] = {**root.attrs["robopolicy"], "schema_version": 7}
    assert validate_store(path) == [
        f"{path}: attrs['robopolicy']['schema_version'] is 7, which this robopolicy does not "
        "know (supported: (1,)); upgrade robopolicy",
        f"{path}: data/state has 20 steps, 4 past the last episode end 16 (uncommitted tail of "
        f"an interrupted write); run `robopolicy data repair {path}` to trim it",
        f"{path}: data/action has NaN or Inf at step 0 (episode 0, its step 0); fix or drop "
        "that episode before training",
    ]
