"""sweeps.racing: a sampled study's configurations raced against the leader on shared seeds."""

from __future__ import annotations

import numpy as np

from sweeps import racing, sequential as seq

# helpers


def _race_values(means: dict[str, float], seeds: int, spread: float = 0.05) -> dict[tuple[str, int], float]:
    rng = np.random.default_rng(4)
    shared = rng.normal(0, 1.0, seeds)  # a seed effect every configuration shares: pairing removes it
    return {(c, k): m + shared[k] + rng.normal(0, spread) for c, m in means.items() for k in range(seeds)}


def test_race_the_first_configuration_leads_a_worse_one_is_out_a_better_one_takes_the_lead():
    plan = seq.Plan(looks=(2, 3, 4), margin=0.2)
    vals = _race_values({"a": 25.0, "b": 23.0, "c": 27.0, "d": 25.02}, 4)
    lanes = {c: racing.Lane(target=2) for c in "abcd"}
    lanes = racing.race(lanes, list("abcd"), {"a"}, vals, plan)
    assert lanes["a"].status == racing.LEADS and lanes["b"].status == racing.RACING  # b not finished yet: untouched
    # a 2 dB gap with a shared seed effect: decided once 3 seeds give the paired test a level it can reach
    for _ in range(3):
        done = {c for c in "abcd" if lanes[c].target <= 4}
        lanes = racing.race(lanes, list("abcd"), done, vals, plan)
    assert lanes["b"].status == racing.OUT and lanes["b"].against in ("a", "c")
    assert lanes["c"].status == racing.LEADS and lanes["a"].status == racing.OUT and lanes["a"].against == "c"
    assert lanes["d"].status in (racing.OUT, racing.TIED)  # 0.02 dB from a, 2 dB below c


def test_race_a_leader_behind_its_challenger_gets_seeds_first():
    plan = seq.Plan(looks=(2, 3, 4), margin=0.01)
    lanes = {"a": racing.Lane(target=2, status=racing.LEADS), "b": racing.Lane(target=3)}
    vals = _race_values({"a": 25.0, "b": 25.1}, 4, spread=0.3)
    out = racing.race(lanes, ["a", "b"], {"a", "b"}, vals, plan)
    assert out["a"].target == 3 and out["b"].status == racing.RACING and out["b"].target == 3
    assert racing.race(lanes, ["a", "b"], {"a", "b"}, vals, plan, pruned={"b"})["b"].status == racing.OUT


def test_race_minimising_flips_better_and_lanes_round_trip():
    plan = seq.Plan(looks=(3,), margin=0.1, maximize=False)
    vals = _race_values({"a": 25.0, "b": 20.0}, 3)
    lanes = racing.race({"a": racing.Lane(3, racing.LEADS), "b": racing.Lane(3)}, ["a", "b"], {"a", "b"}, vals, plan)
    assert lanes["b"].status == racing.LEADS and lanes["a"].status == racing.OUT  # lower is better
    assert racing.Lane.from_json(lanes["b"].as_json()) == lanes["b"]


def test_a_configuration_with_no_trained_run_never_leads():
    plan = seq.Plan(looks=(3, 4, 5), margin=1.0)
    nan = float("nan")
    vals = {("dead", k): nan for k in range(5)} | _race_values({"live": 23.0}, 5, spread=0.2)
    lanes = {c: racing.Lane(target=3) for c in ("dead", "live")}
    first = racing.race(lanes, ["dead", "live"], {"dead"}, vals, plan)  # only the dead one has finished
    assert first["dead"].status == racing.RACING and first["live"].status == racing.RACING  # it waits for a leader
    lanes = dict(lanes)
    for _ in range(6):  # the live one leads; the dead one is tested against it, seeds handed out as it asks
        done = {c for c in lanes if all((c, k) in vals for k in range(lanes[c].target))}
        lanes = racing.race(lanes, ["dead", "live"], done, vals, plan)
    assert lanes["live"].status == racing.LEADS and lanes["dead"].status == racing.OUT
    assert lanes["dead"].against == "live"
    # nobody trained and nobody will join: the race cannot go on, and no one is called a winner
    dead = {("d1", k): nan for k in range(3)} | {("d2", k): nan for k in range(3)}
    alone = racing.race(
        {c: racing.Lane(target=3) for c in ("d1", "d2")}, ["d1", "d2"], {"d1", "d2"}, dead, plan, complete=True
    )
    assert {lane.status for lane in alone.values()} == {racing.UNDECIDED}
