"""The controller core drives the native Panda in real time with asynchronous inference."""

import pytest

from robopolicy.real.closed_loop import closed_loop


@pytest.fixture
def flow_policy(small_flow_policy):
    return small_flow_policy


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.15])
def test_the_loop_keeps_real_time_and_drops_late_actions(flow_policy, delay):
    summary = closed_loop(flow_policy, episodes=2, max_episode_steps=30, delay=delay,
                          progress=False)
    # real time: 20 Hz ticks, whatever inference costs (it runs beside the loop)
    assert summary["seconds"] == pytest.approx(summary["steps"] / 20, rel=0.25)
    # a decision every Ta = 4 actions or sooner, none lost to stale or missing observations
    assert summary["decisions"] >= summary["steps"] / 4 - 2
    assert summary["hold_ticks"] == 0
    # a chunk's first action belongs to its observation's tick, gone by the time the chunk
    # arrives a tick later; 150 ms (three ticks) late, the next two are gone too
    per_decision = summary["dropped_actions"] / summary["decisions"]
    assert (1.5 <= per_decision <= 3.5) if delay else (per_decision <= 1.2)


@pytest.mark.slow
def test_on_simulated_time_without_delay_the_loop_runs_like_the_synchronous_executor(
        flow_policy):
    """A decision at every Ta-th tick, used at the tick it was asked for: no action dropped,
    none executed late (the executor's timing, which `robopolicy eval` uses)."""
    summary = closed_loop(flow_policy, episodes=2, max_episode_steps=30, realtime=False,
                          progress=False)
    assert summary["dropped_actions"] == 0 and summary["hold_ticks"] == 0
    # Ta = 4: a decision every 4 ticks, as the executor plans
    assert summary["steps"] / 4 <= summary["decisions"] <= summary["steps"] / 4 + 2
    delayed = closed_loop(flow_policy, episodes=2, max_episode_steps=30, realtime=False,
                          delay=0.1, progress=False)
    assert delayed["dropped_actions"] > 0  # two ticks late: what has passed is dropped
