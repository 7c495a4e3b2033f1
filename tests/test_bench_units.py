"""The benchmarks' own arithmetic (no broker, no server): how bench/bench_bridge.py turns interleaved rounds
into the figures and ratios its goal lines print."""

from __future__ import annotations

import math

import pytest

from bench.bench_bridge import combine_rounds, loop_budget, round_ratio


def test_rounds_combine_to_medians_and_keep_each_rounds_rate_in_order():
    rounds = [{"rate": 100.0, "cpu_us": 5.0, "own_cpu_us": float("nan")},
              {"rate": 300.0, "cpu_us": 7.0, "own_cpu_us": 2.0},
              {"rate": 200.0, "cpu_us": 6.0, "own_cpu_us": 4.0}]
    out = combine_rounds(rounds)
    assert out["rate"] == 200.0 and out["cpu_us"] == 6.0
    assert out["own_cpu_us"] == 3.0  # a round without a CPU window does not count
    assert out["rates"] == [100.0, 300.0, 200.0] and "server_cpu_us" not in out
    assert math.isnan(combine_rounds([{"rate": 1.0, "batch": float("nan")}])["batch"])


def test_a_ratio_pairs_the_stages_of_one_round_not_the_medians():
    # a machine twice as fast in round 2 moves both of its stages alike
    bridge = combine_rounds([{"rate": 50.0}, {"rate": 100.0}, {"rate": 90.0}])
    passthrough = combine_rounds([{"rate": 100.0}, {"rate": 200.0}, {"rate": 120.0}])
    ratio, text = round_ratio(bridge, passthrough)
    assert ratio == 0.5 and text == "median 0.500 of 3 rounds (0.500, 0.500, 0.750)"
    assert bridge["rate"] / passthrough["rate"] == 0.75  # the ratio of the medians would pair different rounds
    one, text = round_ratio(combine_rounds([{"rate": 3.0}]), combine_rounds([{"rate": 4.0}]))
    assert one == 0.75 and text == "0.750"
    # a stage that failed ends its round: the rounds that have both count
    assert round_ratio(combine_rounds([{"rate": 1.0}, {"rate": 4.0}]), passthrough)[0] == pytest.approx(0.015)


def test_the_loop_budget_of_a_ratio_is_the_bridges_busy_share_over_the_goal_rate():
    pt = {"rate": 100_000.0, "loop_cpu_us": 8.0, "loop_busy": 0.8, "loop_waiting": 0.05, "cores": 1.9}
    alo = {"rate": 50_000.0, "loop_cpu_us": 18.0, "loop_busy": 0.9, "loop_waiting": 0.1, "cores": 2.0}
    # 0.7 of 100,000/s is 70,000/s; a loop busy 90% of the time then has 0.9 s / 70,000 = 12.9 us per event
    text = loop_budget(pt, alo, 0.7)
    assert ("passthrough 8.0 us/event, busy 80%, waiting for a CPU 5%; bridge 18.0 us/event, busy 90%, waiting for a "
            "CPU 10%") in text
    assert text.endswith("needs the bridge's loop <= 12.9 us/event (now 18.0)")
