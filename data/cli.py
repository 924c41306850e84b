"""``robopolicy data``: inspect, check, convert and repair episode stores.

    robopolicy data info PATH [--json] [--no-stats]
    robopolicy data validate PATH
    robopolicy data convert SRC DST [--zarr-format {2,3}]
    robopolicy data export SRC DST --format {lerobot,robomimic} [--fps FPS] [--pix-fmt PF]
    robopolicy data view PATH [--episodes A:B] [--save FILE.rrd]
    robopolicy data report PATH [--out DIR]
    robopolicy data repair PATH
    robopolicy data merge OUT SRC [SRC ...] [--overwrite]

Heavy imports (zarr, numpy, h5py) happen inside the run functions so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

STAT_KEYS = ("min", "max", "mean", "std")  # what info shows of compute_stats' results
SHOW_VALUES = 6  # per-feature values printed per statistic before eliding the rest


def add_parser(subparsers) -> None:
    """Register ``data`` and its sub-commands on the top-level parser."""
    p = subparsers.add_parser("data", help="inspect, validate, convert, repair and merge stores; "
                                           "export, view and report them",
                              description="Inspect, validate, convert, repair and merge episode "
                                          "stores; export them to LeRobot or robomimic, view "
                                          "them in Rerun, report them as PNG + HTML.")
    sub = p.add_subparsers(dest="data_command", required=True, metavar="COMMAND")

    info = sub.add_parser("info", help="summary of a store: episodes, keys, codecs, statistics")
    info.add_argument("path", help="store directory or .zarr.zip")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.add_argument("--no-stats", action="store_true", help="skip per-key statistics")
    info.set_defaults(run=run_info)

    validate = sub.add_parser("validate", help="check a store; exit 1 listing its problems")
    validate.add_argument("path", help="store directory or .zarr.zip")
    validate.set_defaults(run=run_validate)

    convert = sub.add_parser("convert",
                             help="robomimic HDF5, LeRobot v3 or any store -> new zarr store")
    convert.add_argument("src", help="robomimic .hdf5/.h5 file, LeRobot v3 dataset directory, "
                                     "store directory or .zarr.zip")
    convert.add_argument("dst", help="new store directory (must not exist)")
    convert.add_argument("--zarr-format", type=int, choices=(2, 3), default=3,
                         help="zarr format of the new store (default: 3)")
    convert.set_defaults(run=run_convert)

    export = sub.add_parser("export", help="store -> LeRobot v3 directory or robomimic HDF5")
    export.add_argument("src", help="store directory or .zarr.zip")
    export.add_argument("dst", help="new LeRobot directory or .hdf5 file (must not exist)")
    export.add_argument("--format", required=True, choices=("lerobot", "robomimic"),
                        dest="fmt", help="what to write")
    export.add_argument("--fps", type=float, default=None,
                        help="frame rate for LeRobot when the store records none")
    export.add_argument("--pix-fmt", choices=("yuv420p", "yuv444p"), default="yuv420p",
                        help="LeRobot camera videos: yuv420p plays everywhere, yuv444p keeps "
                             "full-resolution colour (default: yuv420p)")
    export.set_defaults(run=run_export)

    view = sub.add_parser("view", help="stream a store to the Rerun viewer, or save a .rrd")
    view.add_argument("path", help="store directory or .zarr.zip")
    view.add_argument("--episodes", default=None, metavar="A:B",
                      help="episode range as a Python slice, e.g. 0:10 (default: all)")
    view.add_argument("--save", default=None, metavar="FILE.rrd",
                      help="write a recording instead of opening a viewer (headless)")
    view.set_defaults(run=run_view)

    report = sub.add_parser("report", help="contact sheet, per-key plots and index.html")
    report.add_argument("path", help="store directory or .zarr.zip")
    report.add_argument("--out", default=None, help="output directory (default: PATH-report)")
    report.set_defaults(run=run_report)

    repair = sub.add_parser("repair", help="trim the uncommitted tail an interrupted write left")
    repair.add_argument("path", help="store directory")
    repair.set_defaults(run=run_repair)

    merge = sub.add_parser("merge", help="merge stores of one task into a new store",
                           description="Merge stores of one task and control rate into a new "
                                       "store, in order (e.g. scripted demos + teleop "
                                       "corrections). Keys of role 'other' that only some "
                                       "sources have are filled (timestamp: step / fps, "
                                       "intervention: false, others: zeros).")
    merge.add_argument("out", help="new store directory")
    merge.add_argument("sources", nargs="+", metavar="SRC",
                       help="store directory or .zarr.zip to merge, in order")
    merge.add_argument("--overwrite", action="store_true",
                       help="replace OUT if it is an existing store (once the merge succeeded)")
    merge.set_defaults(run=run_merge)


# --------------------------------------------------------------------------- info
def _size_on_disk(path: Path) -> int:
    """Bytes of the zip file, or of every file under a directory store."""
    if path.is_file():
        return path.stat().st_size
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


def _codec_name(codec: Any) -> str:
    """A short name for a v2 (numcodecs) or v3 (zarr codec) compressor or filter."""
    cname = getattr(codec, "cname", None)
    if cname is not None:  # Blosc: the inner compressor is what matters
        shuffle = getattr(codec, "shuffle", "")
        shuffle = {0: "noshuffle", 1: "shuffle", 2: "bitshuffle"}.get(shuffle, shuffle)
        cname = getattr(cname, "value", cname)
        shuffle = getattr(shuffle, "value", shuffle)
        return f"blosc({cname},{codec.clevel},{shuffle})"
    name = getattr(codec, "codec_id", None) or type(codec).__name__.removesuffix("Codec").lower()
    level = getattr(codec, "level", None)
    return f"{name}({level})" if level is not None else name


def _key_info(store, key: str, role: str) -> dict[str, Any]:
    """Shape (committed steps), dtype, chunks and codecs of one data key."""
    from robopolicy.data.store import is_image

    arr = store.array(key)
    return {"shape": [store.n_steps, *arr.shape[1:]], "dtype": str(arr.dtype),
            "chunks": list(arr.chunks), "role": role, "image": is_image(arr.shape, arr.dtype),
            "codecs": [_codec_name(c) for c in (*arr.filters, *arr.compressors)]}


def describe(path: str | os.PathLike, stats: bool = True) -> dict[str, Any]:
    """Everything ``data info`` shows, as plain JSON-able values."""
    import numpy as np

    from robopolicy.data.stats import compute_stats
    from robopolicy.data.store import EpisodeStore

    path = Path(path)
    with EpisodeStore.open(path) as store:
        lengths = store.episode_lengths
        roles = store.roles
        keys = {k: _key_info(store, k, roles[k]) for k in store.keys}
        numeric = [k for k, v in keys.items() if not v["image"]
                   and np.dtype(v["dtype"]).kind in "biuf"]
        if stats and store.n_steps and numeric:
            for key, values in compute_stats(store, numeric).items():
                keys[key]["stats"] = {s: values[s].ravel().tolist() for s in STAT_KEYS}
        return {
            "path": str(path), "zarr_format": store.zarr_format,
            "container": "zip" if path.is_file() else "directory",
            "size_bytes": _size_on_disk(path),
            "n_episodes": store.n_episodes, "n_steps": store.n_steps,
            "episode_ends": store.episode_ends.tolist(),
            "episode_length": ({"min": int(lengths.min()), "mean": float(lengths.mean()),
                                "max": int(lengths.max())} if len(lengths) else None),
            "schema_version": store.info.get("schema_version"),
            **{k: store.info.get(k) for k in ("fps", "robot", "task", "source")},
            "roles": roles, "keys": keys,
            "meta": {k: _dtype_name(store.root["meta"][k].dtype) for k in store.meta_keys},
            "uncommitted_tail": store.uncommitted(),
        }


def _dtype_name(dtype) -> str:
    """numpy's name for a dtype; "str" for the variable-length string types zarr 3 returns."""
    return "str" if dtype.kind in "TUO" else str(dtype)


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _fmt_values(values: list[float]) -> str:
    """A statistic's per-feature values, elided past SHOW_VALUES."""
    shown = ", ".join(f"{v + 0.0:.4g}" for v in values[:SHOW_VALUES])  # no "-0"
    more = f", ... ({len(values)} values)" if len(values) > SHOW_VALUES else ""
    return f"[{shown}{more}]"


def format_info(d: dict[str, Any]) -> str:
    """The text form of :func:`describe`'s result."""
    lines = [f"{d['path']}  (zarr v{d['zarr_format']} {d['container']}, "
             f"{_human_bytes(d['size_bytes'])} on disk)"]
    length = d["episode_length"]
    length = (f"length min {length['min']} / mean {length['mean']:.1f} / max {length['max']}"
              if length else "no episodes")
    lines.append(f"episodes {d['n_episodes']}  steps {d['n_steps']}  {length}")
    lines.append("  ".join(f"{k} {d[k] if d[k] is not None else '-'}"
                           for k in ("fps", "robot", "task", "source")))
    if d["uncommitted_tail"]:
        lines.append(f"note: uncommitted tail present; run `robopolicy data repair {d['path']}`")
    rows = [("key", "role", "shape", "dtype", "chunks", "codecs")]
    rows += [(k, v["role"], str(tuple(v["shape"])), v["dtype"], str(tuple(v["chunks"])),
              " ".join(v["codecs"]) or "none") for k, v in d["keys"].items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
              for r in rows]
    meta = ", ".join(f"{k} ({t})" for k, t in d["meta"].items()) or "none"
    lines.append(f"episode metadata: {meta}")
    with_stats = {k: v["stats"] for k, v in d["keys"].items() if "stats" in v}
    if with_stats:
        lines.append("statistics (per feature, committed steps; images skipped):")
        width = max(map(len, with_stats))
        for key, stats in with_stats.items():
            for i, name in enumerate(STAT_KEYS):
                label = key if i == 0 else ""
                lines.append(f"  {label.ljust(width)}  {name:<4} {_fmt_values(stats[name])}")
    return "\n".join(lines)


def run_info(args: argparse.Namespace) -> int:
    d = describe(args.path, stats=not args.no_stats)
    print(json.dumps(d) if args.json else format_info(d))
    return 0


# --------------------------------------------------------------------------- validate
def run_validate(args: argparse.Namespace) -> int:
    from robopolicy.data.store import EpisodeStore
    from robopolicy.data.validate import validate_store

    problems = validate_store(args.path, progress=sys.stderr.isatty())
    if problems:
        for line in problems:
            print(line)
        print(f"robopolicy data validate: {len(problems)} problem(s) in {args.path}",
              file=sys.stderr)
        return 1
    with EpisodeStore.open(args.path) as store:
        print(f"ok: {args.path} ({store.n_episodes} episodes, {store.n_steps} steps)")
    return 0


# --------------------------------------------------------------------------- convert
def run_convert(args: argparse.Namespace) -> int:
    from robopolicy.data.convert import convert
    from robopolicy.data.store import EpisodeStore

    dst = convert(args.src, args.dst, zarr_format=args.zarr_format,
                  progress=sys.stderr.isatty())
    with EpisodeStore.open(dst) as store:
        print(f"wrote {dst} (zarr v{store.zarr_format}, {store.n_episodes} episodes, "
              f"{store.n_steps} steps, keys: {', '.join(store.keys)})")
    return 0


# --------------------------------------------------------------------------- export, view, report
def run_export(args: argparse.Namespace) -> int:
    from robopolicy.data.export import export

    summary = export(args.src, args.dst, args.fmt, fps=args.fps, pix_fmt=args.pix_fmt,
                     progress=sys.stderr.isatty())
    dropped = f"; not written (no place in {args.fmt}): {', '.join(summary['dropped'])}" \
        if summary["dropped"] else ""
    print(f"wrote {summary['path']} ({args.fmt}, {summary['episodes']} episodes, "
          f"{summary['steps']} steps){dropped}")
    return 0


def run_view(args: argparse.Namespace) -> int:
    from robopolicy.data.view import view

    sent = view(args.path, episodes=args.episodes, save=args.save)
    where = f"saved {sent['saved']}" if sent["saved"] else "sent to the Rerun viewer"
    print(f"{where}: episodes {sent['episodes'][0]}:{sent['episodes'][1]}, {sent['steps']} "
          f"steps, cameras: {', '.join(sent['cameras']) or 'none'}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from robopolicy.data.report import report

    result = report(args.path, args.out)
    print(f"wrote {Path(result['out']) / 'index.html'} ({', '.join(result['files'][:-1])})")
    return 0


# --------------------------------------------------------------------------- repair
def _tail_report(store) -> list[str]:
    """What opening ``store`` for writing will trim or delete, one phrase each."""
    partials = sum(1 for _ in store.path.rglob("*.partial"))
    return store.uncommitted() + ([f"{partials} stray *.partial file(s)"] if partials else [])


def run_repair(args: argparse.Namespace) -> int:
    from robopolicy.data.store import EpisodeStore
    from robopolicy.data.validate import validate_store

    path = Path(args.path)
    with EpisodeStore.open(path) as store:
        found = _tail_report(store)
    # Opening for writing takes the writer lock and trims everything past the last commit.
    with EpisodeStore.open(path, mode="a") as store:
        summary = f"{store.n_episodes} episodes, {store.n_steps} steps"
    if found:
        print(f"repaired {path}: trimmed {'; '.join(found)} ({summary} kept)")
    else:
        print(f"{path}: nothing to trim ({summary})")
    problems = validate_store(path)
    for line in problems:  # what trimming cannot fix (NaN, truncated arrays, bad attrs)
        print(line)
    return 1 if problems else 0


# --------------------------------------------------------------------------- merge
def format_merge(summary: dict[str, Any]) -> str:
    """The one-line text form of :func:`~robopolicy.data.merge.merge_stores`' summary."""
    parts = ", ".join(f"{s['path']} {s['episodes']} episodes / {s['steps']} steps"
                      for s in summary["sources"])
    filled = "; ".join(f"{', '.join(keys)} in {src}" for src, keys in summary["filled"].items())
    return (f"merged {summary['out']}: {parts}; total {summary['n_episodes']} episodes / "
            f"{summary['n_steps']} steps; filled: {filled or 'none'}")


def run_merge(args: argparse.Namespace) -> int:
    from robopolicy.data.merge import merge_stores

    summary = merge_stores(args.sources, args.out, overwrite=args.overwrite,
                           progress=sys.stderr.isatty())
    print(format_merge(summary))
    return 0
