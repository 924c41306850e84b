"""Child process for the SIGKILL test (run as a script, never collected).

    recorder_child.py OUT RATE
        record scripted Lift episodes into OUT at RATE Hz until killed, writing a block every
        4 steps (so a killed episode leaves flushed, uncommitted steps on disk)
"""

import sys

from robopolicy.sim.core import make_env
from robopolicy.teleop.recorder import Recorder, open_store
from robopolicy.teleop.scripted import ScriptedDevice


def main(out: str, rate: float) -> None:
    env = make_env("lift")
    device = ScriptedDevice()
    with open_store(out, env, "lift", source="teleop:scripted") as store:
        Recorder(env, device, store, task="lift", rate=rate, flush_every=4).run()
    sys.exit(3)  # never reached when the test works: it must be killed


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
