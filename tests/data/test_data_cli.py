"""``robopolicy data``: run through the real top-level dispatcher in-process, and once as the
installed console script to check exit codes and the one-line error."""

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from robopolicy.cli import main
from robopolicy.data.store import EpisodeStore

FIXTURES = Path(__file__).parents[1] / "fixtures" / "zarr2"
ROBOPOLICY = Path(sys.executable).parent / "robopolicy"


def make_store(path: Path) -> Path:
    """Two committed episodes (3 and 4 steps) of action and state."""
    with EpisodeStore.create(path, fps=10, robot="panda", task="push") as store:
        for n in (3, 4):
            store.add_episode({"action": np.ones((n, 2), np.float32),
                               "state": np.arange(n, dtype=np.float64)}, {"success": n == 4})
    return path


def test_help_lists_data(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    verbs = capsys.readouterr().out.split("VERB", 1)[1]
    assert "data" in verbs.split()
    assert "inspect, validate, convert, repair and merge stores" in " ".join(verbs.split())


def test_info_json_fields(capsys):
    path = FIXTURES / "dp_v2.zarr"
    assert main(["data", "info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)  # one JSON object and nothing else
    assert (info["n_episodes"], info["n_steps"], info["episode_ends"]) == (3, 16, [5, 12, 16])
    assert info["episode_length"] == {"min": 4, "mean": 16 / 3, "max": 7}
    assert info["keys"]["keypoint"]["shape"] == [16, 9, 2]
    assert info["keys"]["img"]["dtype"] == "uint8"
    assert info["keys"]["action"]["chunks"] == [4, 2]
    assert info["keys"]["action"]["codecs"] == ["blosc(zstd,3,bitshuffle)"]
    assert info["roles"]["action"] == "action"
    assert info["zarr_format"] == 2
    assert info["size_bytes"] == sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    assert info["keys"]["action"]["stats"]["min"] == [0.0, -15.0]
    assert info["keys"]["action"]["stats"]["max"] == [7.5, 0.0]
    assert info["keys"]["state"]["stats"]["mean"] == pytest.approx([7.5, 7.6, 7.7, 7.8, 7.9])
    assert "stats" not in info["keys"]["img"]  # images are not summarised


def test_info_text_on_zip(capsys):
    path = FIXTURES / "dp_v2.zarr.zip"
    assert main(["data", "info", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"(zarr v2 zip, {path.stat().st_size / 1024:.1f} KiB on disk)" in out
    assert "episodes 3  steps 16  length min 4 / mean 5.3 / max 7" in out
    assert "blosc(zstd,3,bitshuffle)" in out
    assert "state     min  [0, 0.1, 0.2, 0.3, 0.4]" in out


def test_validate_exit_codes(tmp_path, capsys):
    path = make_store(tmp_path / "s.zarr")
    assert main(["data", "validate", str(path)]) == 0
    assert capsys.readouterr().out == f"ok: {path} (2 episodes, 7 steps)\n"
    with EpisodeStore.open(path, mode="a") as store:
        store.root.attrs["robopolicy"] = {**store.info, "schema_version": 42}
    assert main(["data", "validate", str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and "schema_version'] is 42" in out[0]


def test_repair_trims_an_uncommitted_tail(tmp_path, capsys):
    path = make_store(tmp_path / "s.zarr")
    store = EpisodeStore.open(path, mode="a")
    writer = store.episode_writer(flush_every=2)
    for _ in range(5):  # four steps flushed past the committed end, then the writer "dies"
        writer.append({"action": np.zeros(2, np.float32), "state": 0.0})
    store.close()
    assert main(["data", "validate", str(path)]) == 1
    assert "robopolicy data repair" in capsys.readouterr().out

    assert main(["data", "repair", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"repaired {path}: trimmed data/action from 11 to 7 rows; " \
           "data/state from 11 to 7 rows (2 episodes, 7 steps kept)" in out
    assert main(["data", "validate", str(path)]) == 0
    with EpisodeStore.open(path) as store:
        assert store.array("action").shape == (7, 2)
        np.testing.assert_array_equal(store.load("state"), [0, 1, 2, 0, 1, 2, 3])
    capsys.readouterr()
    assert main(["data", "repair", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: nothing to trim (2 episodes, 7 steps)\n"


def test_convert_end_to_end(tmp_path, capsys):
    src = tmp_path / "tiny.hdf5"
    with h5py.File(src, "w") as f:
        f.create_group("data").attrs["env_args"] = json.dumps({"env_name": "PickPlace"})
        for n, length in ((2, 4), (10, 3)):
            demo = f.create_group(f"data/demo_{n}")
            demo.create_dataset("actions", data=np.full((length, 2), n, np.float32))
            demo.create_dataset("obs/eef", data=np.zeros((length, 3)))
    dst = tmp_path / "out.zarr"
    assert main(["data", "convert", str(src), str(dst), "--zarr-format", "2"]) == 0
    assert f"wrote {dst} (zarr v2, 2 episodes, 7 steps, keys: action, eef)" in \
        capsys.readouterr().out
    assert main(["data", "info", str(dst), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["task"], info["source"], info["episode_ends"]) == \
        ("PickPlace", "robomimic:tiny.hdf5", [4, 7])
    assert info["meta"] == {"demo": "int64"}
    assert main(["data", "validate", str(dst)]) == 0
    assert main(["data", "convert", str(src), str(dst)]) == 2  # existing dst refused
    assert capsys.readouterr().err == (f"robopolicy data: error: {dst}: already exists; choose "
                                       "a new output path (nothing was overwritten)\n")


def test_console_script_errors_in_one_line(tmp_path):
    missing = tmp_path / "missing.zarr"
    result = subprocess.run([str(ROBOPOLICY), "data", "info", str(missing)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == f"robopolicy data: error: {missing}: no such store\n"
    assert "Traceback" not in result.stderr


def corrupt_dtype(path: Path, key: str, dtype: object) -> None:
    """Give data or meta array ``key`` a dtype no zarr knows, in its metadata file on disk."""
    for name, field in (("zarr.json", "data_type"), (".zarray", "dtype")):
        meta_file = path / key / name
        if meta_file.exists():
            doc = json.loads(meta_file.read_text())
            doc[field] = dtype
            meta_file.write_text(json.dumps(doc))
            return
    raise AssertionError(f"no array metadata for {key} in {path}")


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones too) and its content."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(("zarr_format", "bad", "shown"), [
    (3, "float1024", "'float1024'"),
    (2, "<f1024", "{'name': '<f1024', 'object_codec_id': None}"),  # zarr's v2 spec
])
@pytest.mark.parametrize("command", ["info", "convert"])
def test_unreadable_dtype_is_one_line(tmp_path, capsys, zarr_format, bad, shown, command):
    with EpisodeStore.create(tmp_path / "s.zarr", fps=10, zarr_format=zarr_format) as store:
        for n in (3, 4):
            store.add_episode({"action": np.ones((n, 2), np.float32),
                               "state": np.arange(n, dtype=np.float64)}, {"success": n == 4})
    path = tmp_path / "s.zarr"
    corrupt_dtype(path, "data/state", bad)
    before = snapshot(tmp_path)
    dst = tmp_path / "out.zarr"
    argv = ["data", "info", str(path)] if command == "info" else \
        ["data", "convert", str(path), str(dst)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (f"robopolicy data: error: {path}: data/state cannot be read: No "
                            f"Zarr data type found that matches {shown} (corrupt metadata, or "
                            "written by a newer zarr)\n")
    assert snapshot(tmp_path) == before  # no DST, no temporary directory, source untouched
    assert not dst.exists()


def test_console_script_unreadable_dtypes_in_one_line(tmp_path):
    """Two bad arrays: the first is named, and the second's failure must not surface as an
    asyncio traceback when the process exits."""
    path = make_store(tmp_path / "s.zarr")
    corrupt_dtype(path, "data/action", "float1024")
    corrupt_dtype(path, "data/state", {"name": "float1024", "configuration": {}})
    before = snapshot(tmp_path)
    dst = tmp_path / "out.zarr"
    result = subprocess.run([str(ROBOPOLICY), "data", "convert", str(path), str(dst)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (f"robopolicy data: error: {path}: data/action cannot be read: No "
                             "Zarr data type found that matches 'float1024' (corrupt metadata, "
                             "or written by a newer zarr)\n")
    assert "Traceback" not in result.stderr
    assert not dst.exists()
    assert snapshot(tmp_path) == before
