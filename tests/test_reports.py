"""`cvae report`: verdicts from hand-made runs, and a report built from a tiny real study (real Optuna storage,
real MLflow store, no mocks) whose every number is checked against what the stores hold."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from browser import chromium_path, ci, external_references, open_page
from helpers import TINY
from mlflow import MlflowClient

from reports import analysis, build as build_mod, comparisons
from sweeps import cli as cli_mod, outcome, sequential, stats

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

INFO = {
    "name": "hand",
    "description": "",
    "metric": "val/psnr",
    "direction": "maximize",
    "seeds": 6,
    "niter": 4,
    "degenerate_below": 0.25,
}

# helpers


def hand_runs(
    design: dict[tuple[str, int], list[float]],
    degenerate: set[tuple[tuple[str, int], int]] = frozenset(),
    pruned: dict[tuple[str, int], int] | None = None,
) -> pd.DataFrame:
    """A runs frame like collect.runs_frame's, for (kl.mode, tf.start_decay_epoch) -> values by seed."""
    rows, trial = [], 0
    for (mode, start), values in design.items():
        cid = f"{mode[:3]}{start}"
        for k, v in enumerate(values):
            bad = ((mode, start), k) in degenerate
            rows.append(
                {
                    "trial": trial,
                    "state": "COMPLETE",
                    "value": v,
                    "config_id": cid,
                    "seed": 1 + k,
                    "seed_index": k,
                    "phase": "search",
                    "search_value": np.nan,
                    "degenerate": bad,
                    "cond_gain": 0.1 if bad else 1.0,
                    "psnr_moving": 17.0,
                    "psnr_moving_copy_last": 13.0,
                    "copy_last": 20.0,
                    "epochs": 4,
                    "best_epoch": 4,
                    "duration_s": 60.0,
                    "run_id": f"r{trial}",
                    "run_dir": None,
                    "gif": None,
                    "fail_reason": None,
                    "param:kl.mode": mode,
                    "param:tf.start_decay_epoch": start,
                }
            )
            trial += 1
    for (mode, start), epochs in (pruned or {}).items():
        rows.append(
            {
                **rows[0],
                "trial": trial,
                "state": "PRUNED",
                "value": np.nan,
                "config_id": f"{mode[:3]}{start}p",
                "epochs": epochs,
                "run_id": f"r{trial}",
                "param:kl.mode": mode,
                "param:tf.start_decay_epoch": start,
            }
        )
        trial += 1
    for r in rows:  # the one rule, as collect.runs_frame applies it
        r["outcome"] = outcome.outcome(r["state"], None if r["value"] != r["value"] else r["value"], r)
    return pd.DataFrame(rows)


# the analysis on hand-made runs: exact answers


def test_main_effects_and_pairs_with_their_verdicts() -> None:
    late = [25.0, 25.2, 25.1]  # start 4: clearly better whatever the KL mode
    early = [24.0, 24.1, 24.2]
    runs = hand_runs(
        {
            ("monotonic", 1): early,
            ("cyclical", 1): [v + 0.05 for v in early],
            ("monotonic", 4): late,
            ("cyclical", 4): [v + 0.05 for v in late],
        },
        degenerate={(("cyclical", 1), 2)},
    )
    res = analysis.analyse(runs, INFO, reps=2000)
    by_name = {c["name"]: c for c in res["comparisons"]}
    tf = by_name["tf.start_decay_epoch: 1 vs 4"]
    # paired by seed within each KL mode, over the cells where both sides trained: the collapsed run (cyclical,
    # start 1, seed 2) leaves its cell out of seed 2: D = [-1.0, -1.1, 24.2 - 25.1 = -0.9]
    d = [-1.0, -1.1, -0.9]
    assert tf["paired"] and tf["test"] == "paired t" and tf["pair_seeds"] == [0, 1, 2]
    assert tf["diff"] == pytest.approx(-1.0) and tf["prob_improvement"] == 0.0
    # what equivalence reads: the failure against its trained partner is a margin worse: seed 2's cells -0.9, -1.0
    assert tf["diff_counted"] == pytest.approx(np.mean([-1.0, -1.1, (-0.9 - 1.0) / 2]))
    assert tf["verdict"] == sequential.WORSE and tf["decided_by"] == "values" and tf["runs"] == 12 and tf["look"] == 1
    assert tf["p_value"] == pytest.approx(stats.p_two_sided(stats.paired_estimate(d, [0, 0, 0])))
    assert tf["sign_flip_p"] == 0.25  # 3 pairs: its floor, shown, never deciding
    f = tf["failures"]
    assert (f["a"], f["results_a"], f["b"], f["results_b"], f["seeds_a_more"], f["seeds_b_more"]) == (1, 6, 0, 6, 1, 0)
    kl = by_name["kl.mode: cyclical vs monotonic"]
    assert kl["diff"] == pytest.approx(0.05) and kl["verdict"] == sequential.BETTER  # no spread at all: certain
    assert kl["margin_note"] == "within the margin" and kl["margin_db"] == 1.0
    assert (kl["failures"]["a"], kl["failures"]["b"]) == (1, 0)  # cyclical failed once: stated beside it
    # within each family the value and failure tests are adjusted together (Holm, with Tarone's rule): the main
    # effects' failure test on 3 seeds of two cells cannot go below 0.061, so the value tests share alpha as Holm
    # alone would; a setting pair's on 3 seeds of one cell can (2/64), and counts
    mains = [c for c in res["comparisons"] if c["kind"] == "main effect"]
    assert [c["p_adjusted"] for c in mains] == pytest.approx(stats.holm([c["p_sequential"] for c in mains]).tolist())
    pairs = [c for c in res["comparisons"] if c["kind"] == "setting pair"]
    fails = [c["failures"]["p_sequential"] if c["failures"]["test"] else np.nan for c in pairs]
    _, want = stats.tarone_holm(
        [c["p_sequential"] for c in pairs] + fails,
        [0.0] * len(pairs) + [stats.failure_test_paired_min_p(3)] * len(pairs),
        0.05,
    )
    assert len(pairs) == 3 and [c["p_adjusted"] for c in pairs] == pytest.approx(want[:3].tolist())
    # settings ranked by score; the collapsed run is counted in its setting's failure rate and listed
    best = res["settings"][0]
    assert best["label"] == "kl.mode=cyclical, tf.start_decay_epoch=4" and best["n"] == 3 and best["failed"] == 0
    assert best["values"] == pytest.approx([25.05, 25.25, 25.15]) and best["score"] == pytest.approx(25.15)
    bad = next(x for x in res["settings"] if x["config_id"] == "cyc1")
    assert (bad["failed"], bad["results"], bad["outcomes"]["collapsed"]) == (1, 3, 1)
    assert bad["score"] == pytest.approx((24.05 + 24.15 + 23.0) / 3) and bad["failure_ci"][0] > 0
    assert [(d["seed"], d["outcome"]) for d in res["failed_runs"]] == [(3, "collapsed")]
    assert res["noise_floor"] == pytest.approx(
        stats.noise_floor([early, [24.05, 24.15], late, [v + 0.05 for v in late]])
    )
    # -1.0 dB with an interval reaching past -1 on one side and short of it on the other: no margin word
    assert any(
        line.startswith("**tf.start_decay_epoch**: 1 vs 4: **1 is worse**: -1.00 dB [")
        and line.endswith("fails 1/6 vs 0/6.")
        for line in res["answer"]
    )
    for c in res["comparisons"]:  # what results.json promises for every comparison
        assert {
            "verdict",
            "look",
            "runs",
            "paired",
            "margin_db",
            "p_adjusted",
            "interval",
            "prob_improvement",
            "failures",
            "equivalence_bound",
            "decided_by",
        } <= set(c)
    json.dumps(res)  # results.json-ready


def test_noise_shared_by_seed_is_paired_away_and_equivalence_is_a_verdict() -> None:
    seed_effect = [-0.8, 0.0, 0.7, -0.3, 0.5, 0.2]
    base = {("monotonic", 1): 24.0, ("cyclical", 1): 24.02, ("monotonic", 4): 25.0, ("cyclical", 4): 25.0}
    wiggle = [0.02, -0.03, 0.01, 0.0, -0.01, 0.02]
    runs = hand_runs(
        {c: [m + s + (w if c[0] == "cyclical" else 0) for s, w in zip(seed_effect, wiggle)] for c, m in base.items()}
    )
    res = analysis.analyse(runs, {**INFO, "margin_db": 0.25}, reps=500)
    kl = next(c for c in res["comparisons"] if c["factor"] == "kl.mode")
    assert kl["verdict"] == sequential.EQUIVALENT and kl["correlation"] > 0.99 and kl["narrower"] > 0.9
    assert kl["width_paired"] < 0.1 * kl["width_unpaired"]
    assert "**equivalent within +-0.25 dB**" in " ".join(res["answer"])


def test_a_sequential_study_reports_the_look_each_verdict_was_reached_at() -> None:
    tf1, tf4 = [24.0, 24.3, 23.9, 24.2, 24.1], [25.0, 25.2, 25.1, 24.9, 25.3]
    wig = [0.3, -0.4, 0.2, -0.1, 0.5]
    runs = hand_runs(
        {
            ("monotonic", 1): tf1,
            ("cyclical", 1): [v + w for v, w in zip(tf1, wig)],
            ("monotonic", 4): tf4,
            ("cyclical", 4): [v + w for v, w in zip(tf4, wig)],
        }
    )
    info = {**INFO, "looks": [3, 4, 5], "look": 2, "margin_db": 0.1}
    res = analysis.analyse(runs, info, reps=300)
    by = {c["factor"]: c for c in res["comparisons"] if c["kind"] == "main effect"}
    assert by["tf.start_decay_epoch"]["looks"] == 3 and by["tf.start_decay_epoch"]["verdict"] == sequential.WORSE
    assert by["kl.mode"]["verdict"] == sequential.OPEN and by["kl.mode"]["look"] == 2 and by["kl.mode"]["seeds"] == 4
    assert res["study"]["looks"] == [3, 4, 5] and res["study"]["look"] == 2


def test_single_seed_studies_never_give_a_verdict() -> None:
    runs = hand_runs({("monotonic", 1): [24.0], ("cyclical", 1): [26.0], ("monotonic", 4): [22.0]})
    res = analysis.analyse(runs, {**INFO, "seeds": 1}, reps=500)
    assert "cannot separate settings from seed noise" in res["answer"][0] and "--confirm" in res["answer"][0]
    pair = [c for c in res["comparisons"] if c["kind"] == "setting pair"][0]
    assert pair["verdict"] == sequential.CANNOT_TELL and "fewer than 2 trained seeds" in pair["reason"]


def test_compute_counts_what_pruning_saved() -> None:
    runs = hand_runs({("monotonic", 1): [24.0, 24.1]}, pruned={("cyclical", 1): 1})
    comp = analysis.analyse(runs, INFO, reps=200)["compute"]
    # 3 runs x 4 epochs planned; the pruned run stopped after 1 epoch -> 3 saved
    assert (comp["runs"], comp["pruned"], comp["epochs_trained"], comp["epochs_planned"]) == (3, 1, 9.0, 12.0)
    assert comp["epochs_saved_by_pruning"] == 3.0 and comp["saved_fraction"] == pytest.approx(0.25)


def test_confirmation_runs_sit_next_to_their_search_mean() -> None:
    runs = hand_runs({("monotonic", 4): [25.0, 25.4]})
    extra = runs.iloc[:2].copy()
    extra["phase"], extra["trial"], extra["value"], extra["run_id"] = "confirm", [9, 10], [24.6, 24.8], ["c1", "c2"]
    res = analysis.analyse(pd.concat([runs, extra]), INFO, reps=300)
    (c,) = res["confirm"]
    assert (c["search_mean"], c["n"], c["mean"]) == (pytest.approx(25.2), 2, pytest.approx(24.7))
    assert c["shrinkage"] == pytest.approx(-0.5)
    assert res["settings"][0]["values"] == [25.0, 25.4]  # confirmation seeds never enter the search ranking


# a tiny real study, end to end


def _spec(tmp_path: Path, data_cache: Path) -> Path:
    spec = tmp_path / "rep.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "rep",
                "description": "tiny replicated grid",
                "experiment": "demo",
                "seeds": 2,
                "overrides": {**TINY, "run.out_dir": str(tmp_path / "runs"), "data.cache_dir": str(data_cache)},
                "sampler": {"type": "grid"},
                "pruner": {"type": "none"},
                "heartbeat_seconds": 5,
                # seconds-long models ignore their condition; rank them anyway so every number is exercised
                "degenerate_below": -100.0,
                "grid": {"kl.mode": ["monotonic", "cyclical"]},
            }
        )
    )
    return spec


@pytest.mark.slow
def test_report_of_a_tiny_real_study_holds_exactly_what_the_stores_hold(
    tmp_path: Path, data_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "OPTUNA_STORAGE"):
        monkeypatch.delenv(var, raising=False)
    spec = _spec(tmp_path, data_cache)
    assert cli_mod.main(["sweep", str(spec), "--threads", "1"]) == 0
    # confirmation: the best configuration again, with 2 seeds the search never used
    assert cli_mod.main(["sweep", str(spec), "--threads", "1", "--confirm", "1", "--seeds", "2"]) == 0
    assert build_mod.main([str(spec)]) == 0
    out = tmp_path / "runs" / "reports" / "rep"
    results = json.loads((out / "results.json").read_text())

    study = optuna.load_study(study_name="rep", storage=f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    trials = [t for t in study.get_trials() if t.user_attrs["phase"] == "search"]
    confirm = [t for t in study.get_trials() if t.user_attrs["phase"] == "confirm"]
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)
    search_seeds = {t.user_attrs["seed"] for t in trials}
    assert sorted(t.user_attrs["seed"] for t in confirm) == [1001, 1002] and not search_seeds & {1001, 1002}
    assert len({t.user_attrs["config_id"] for t in confirm}) == 1 and all(t.state.name == "COMPLETE" for t in confirm)
    (c,) = results["confirm"]
    assert c["config_id"] == confirm[0].user_attrs["config_id"] == results["settings"][0]["config_id"]
    assert c["values"] == [t.value for t in sorted(confirm, key=lambda t: t.user_attrs["seed"])]
    assert c["search_mean"] == results["settings"][0]["mean"]
    for t in confirm:
        tags = client.get_run(t.user_attrs["mlflow_run_id"]).data.tags
        assert tags["phase"] == "confirm" and tags["seed"] == str(t.user_attrs["seed"])
    assert len(results["settings"]) == 2 and all(s["n"] == 2 for s in results["settings"])
    for s in results["settings"]:
        mine = sorted(
            (t for t in trials if t.user_attrs["config_id"] == s["config_id"] and not t.user_attrs["degenerate"]),
            key=lambda t: t.user_attrs["seed"],
        )
        assert s["values"] == [t.value for t in mine] and s["seeds"] == [t.user_attrs["seed"] for t in mine]
        assert s["run_ids"] == [t.user_attrs["mlflow_run_id"] for t in mine]
        assert s["params"]["kl.mode"] == mine[0].params["kl.mode"] if mine else True
        if mine:
            assert s["mean"] == pytest.approx(float(np.mean(s["values"])), abs=0) or s["mean"] == np.mean(s["values"])
        for t in mine:  # the trial's value is the best val/psnr MLflow holds for its run
            history = client.get_metric_history(t.user_attrs["mlflow_run_id"], "val/psnr")
            assert t.value == max(m.value for m in history)
            run = client.get_run(t.user_attrs["mlflow_run_id"])
            assert run.data.tags["config_id"] == s["config_id"] and run.data.tags["seed"] == str(t.user_attrs["seed"])
            assert run.data.tags["degenerate"] == "false"
    everything = study.get_trials()
    assert results["copy_last"] == pytest.approx(np.mean([t.user_attrs["copy_last_psnr"] for t in everything]))
    assert results["compute"]["runs"] == 6 and results["compute"]["epochs_trained"] == 12
    for c in results["comparisons"]:
        assert c["verdict"] in (sequential.BETTER, sequential.WORSE, sequential.EQUIVALENT, sequential.CANNOT_TELL)

    # one self-contained page: no file or URL outside itself; everything also in MLflow
    page = (out / "index.html").read_text()
    assert not re.findall(r"""(?:src|href)\s*=\s*["'](?!data:|#)""", page)
    assert "url(" not in page and "<script" not in page
    for line in results["answer"]:
        assert line.split(":")[0].replace("**", "") in page.replace("<strong>", "").replace("</strong>", "")
    for name in ("settings.png", "curves.png", "four_plots.png", "per_frame.png", "report.md"):
        assert (out / name).stat().st_size > 1000, name
    parent = study.user_attrs["mlflow_parent_run_id"]
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert logged == {"report/index.html", "report/report.md", "report/results.json"}
    assert external_references(page) == []

    # a study started from a YAML path is found by its name in the storage, from any folder
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    url = f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}"
    assert build_mod.main(["rep", "--storage", url, "--out", str(elsewhere / "r")]) == 0
    assert json.loads((elsewhere / "r" / "results.json").read_text())["settings"] == results["settings"]
    monkeypatch.chdir(tmp_path)

    # the page in a real browser: something on it, no JavaScript error; the screenshot is kept
    if chromium_path() is None and not ci():
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")
    shot = Path(os.environ.get("CVAE_TEST_ARTIFACTS", tmp_path)) / "report_index.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    browser = open_page(out / "index.html", shot)
    assert not browser.is_empty and browser.console_errors == []
    assert "The answer" in browser.text and "Every seed, per setting" in browser.text
    assert shot.stat().st_size > 20_000


def test_report_of_a_missing_study_is_one_line(
    tmp_path: Path, data_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _spec(tmp_path, data_cache)
    assert build_mod.main([str(spec)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no study rep in" in err[0] and "(no such file)" in err[0] and "make sweep" in err[0]
    assert not (tmp_path / "runs" / "reports").exists()


def test_cross_study_compares_the_best_setting_of_each_study() -> None:
    fixed = analysis.analyse(hand_runs({("monotonic", 4): [25.0, 25.1, 25.2]}), {**INFO, "name": "fixed"}, reps=500)
    learned = analysis.analyse(
        hand_runs({("monotonic", 4): [25.6, 25.75, 25.8], ("cyclical", 4): [24.0, 24.1, 24.2]}),
        {**INFO, "name": "learned"},
        reps=500,
    )
    (c,) = comparisons.cross_study({"fixed": fixed, "learned": learned})
    assert c["a"].startswith("fixed: ") and c["b"] == "learned: kl.mode=monotonic"  # what varies in its study
    # the same run seeds (1, 2, 3) in both studies: paired, d = [-0.6, -0.65, -0.6]
    assert c["paired"] and c["diff"] == pytest.approx(-0.6 - 0.05 / 3) and c["prob_improvement"] == 0.0
    assert c["verdict"] == sequential.WORSE and c["kind"] == "study pair"


def test_a_sequential_study_in_its_first_look_decides_nothing_yet() -> None:
    runs = hand_runs({("monotonic", 1): [24.0, 24.1], ("cyclical", 1): [24.2, 24.0]})
    res = analysis.analyse(runs, {**INFO, "looks": [3, 4, 5], "look": 0}, reps=200)
    assert not [c for c in res["comparisons"] if c["kind"] == "main effect"]
    assert res["answer"][0].startswith("The study is still in its first look (3 seeds per configuration)")
