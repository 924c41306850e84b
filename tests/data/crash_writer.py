"""Child process for the store's lock and crash tests (run as a script, never collected).

    crash_writer.py STORE_PY stream STORE ZARR_FORMAT K FLUSH_EVERY
        create STORE, commit K episodes (prints "committed I" after each), then stream one more
        episode step by step through episode_writer and never commit it (prints "flushed N" each
        time the data arrays grew to N steps) until killed
    crash_writer.py STORE_PY hold STORE
        open STORE for writing, print "locked", then sleep until killed
    crash_writer.py STORE_PY contend STORE
        try to open STORE for writing: print "refused: <error>" or add one episode and print
        "appended <index>"; then open it read-only and print "reader <episodes> <steps>"

STORE_PY is the path of robopolicy/data/store.py. The child loads that file directly so that it
does not import the robopolicy.data package (which pulls in torch and costs a second a process);
the code under test is the same file.
"""

from __future__ import annotations

import importlib.util
import sys
import time

import numpy as np

IMG_SHAPE = (84, 84, 3)
ACTION_DIM = 7


def episode_length(i: int) -> int:
    return 4 + 3 * i


def step_data(i: int, t: int) -> dict[str, np.ndarray]:
    """Step t of episode i: every value derived from (i, t), so a reader can check it exactly."""
    action = (i * 1000 + t + np.arange(ACTION_DIM) / 10).astype(np.float32)
    img = (np.arange(np.prod(IMG_SHAPE)).reshape(IMG_SHAPE) + 7 * i + 3 * t) % 251
    return {"action": action, "img": img.astype(np.uint8)}


def episode_data(i: int) -> dict[str, np.ndarray]:
    steps = [step_data(i, t) for t in range(episode_length(i))]
    return {k: np.stack([s[k] for s in steps]) for k in steps[0]}


def load_store_module(path: str):
    spec = importlib.util.spec_from_file_location("_robopolicy_store_child", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stream(store_mod, path: str, zarr_format: int, k: int, flush_every: int) -> None:
    store = store_mod.EpisodeStore.create(path, fps=10.0, zarr_format=zarr_format)
    for i in range(k):
        store.add_episode(episode_data(i), {"seed": i})
        print(f"committed {i}", flush=True)
    writer = store.episode_writer(flush_every=flush_every)
    written, t, deadline = writer.written, 0, time.monotonic() + 30
    while time.monotonic() < deadline:  # the parent kills us long before this
        writer.append(step_data(k, t))
        t += 1
        if writer.written != written:
            written = writer.written
            print(f"flushed {written}", flush=True)
    sys.exit(3)  # never reached when the test works: it must be killed mid-episode


def hold(store_mod, path: str) -> None:
    store = store_mod.EpisodeStore.open(path, mode="a")
    print("locked", flush=True)
    time.sleep(60)
    store.close()
    sys.exit(3)


def contend(store_mod, path: str) -> None:
    try:
        store = store_mod.EpisodeStore.open(path, mode="a")
    except store_mod.StoreError as exc:
        print(f"refused: {exc}", flush=True)
    else:
        with store:
            print(f"appended {store.add_episode(episode_data(store.n_episodes))}", flush=True)
    with store_mod.EpisodeStore.open(path) as reader:
        print(f"reader {reader.n_episodes} {reader.n_steps}", flush=True)


def main(argv: list[str]) -> None:
    store_mod = load_store_module(argv[0])
    command, path, *rest = argv[1:]
    if command == "stream":
        stream(store_mod, path, *(int(x) for x in rest))
    elif command == "hold":
        hold(store_mod, path)
    elif command == "contend":
        contend(store_mod, path)
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
