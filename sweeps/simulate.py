"""Error rates of the decision rule, measured: whole studies simulated through sweeps.sequential (pure, seeded).

A simulated study is what `make sweep` does with the noise replaced by draws: seed k of every configuration
is drawn at once (one row, so the correlations between configurations that share a seed are kept), the
configurations' true means differ by chosen main effects, and `looks.advance` decides each look and
hands out the next look's seeds exactly as the coordinator does. A drawn NaN is a failed run (collapsed or
diverged): it costs its run and enters the decisions as a failure, as a real one does. Noise models, fitted to
measured per-seed values of a study (`fit`: trained runs' residuals; its collapsed runs as failures):

- normal: each seed's row ~ N(0, S), S the trained runs' covariance across configurations (pairwise complete);
- resampled: a measured row drawn with replacement (plus a little kernel noise), its failures where they were
  measured: the study's own residuals with its own failures (one-sided where the study's were);
- shuffled: normal, and each row fails as many runs as a measured row did, at configurations drawn at random:
  the study's failure frequency as noise that favours no side;
- heavy: normal, and any run loses `bad_db` with probability `bad_p` (both sides);
- outliers: normal, and a run of one side (`side_b`) falls by 2-3 of its configuration's SDs with probability
  1/12 (the frequency of the demo's low runs): a one-sided tail that is noise, not a difference;
- failures 10% / failures 30%: normal, and a run of the other side (`side_a`) fails with that probability.

The truth a verdict is judged against (`truth`): a question's value effect when it has one (the cases give the
side that fails more the lower value, so the two agree), else the side that fails more is worse, else none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping

import numpy as np

from sweeps import looks, sequential as seq
from sweeps.questions import Question, main_effects
from sweeps.stats import failure_interval

NOISES = ("normal", "resampled", "shuffled", "heavy", "outliers", "failures 10%", "failures 30%")
SMOOTH = 0.3  # the smoothed bootstrap's kernel, as a share of each configuration's spread
BAD_P, BAD_DB = 1 / 12, 2.0  # the heavy tail seen in a demo study: 1 run of 12 at 21.19 dB, its siblings 23.1-23.3
OUTLIER_P, OUTLIER_SDS = 1 / 12, (2.0, 3.0)


@dataclass(frozen=True)
class Noise:
    """Residual rows of a study (seeds x configurations, centred on each configuration's trained runs, NaN where
    the run failed) in `configs` order, and which side the one-sided models act on."""

    configs: tuple[str, ...]
    rows: np.ndarray
    side_a: tuple[bool, ...] = ()
    """configurations that fail more (failures p%): the first level of the contaminated factor"""
    side_b: tuple[bool, ...] = ()
    """configurations whose runs fall (outliers): its second level"""
    bad_p: float = BAD_P
    bad_db: float = BAD_DB

    @property
    def failed(self) -> np.ndarray:
        return np.isnan(self.rows)

    @property
    def cov(self) -> np.ndarray:
        """Pairwise-complete covariance of the trained residuals, projected onto the positive semi-definite cone."""
        import pandas as pd

        c = pd.DataFrame(self.rows).cov(min_periods=2).to_numpy()
        w, v = np.linalg.eigh((c + c.T) / 2)
        return (v * np.clip(w, 0.0, None)) @ v.T

    def fail_rates(self, kind: str) -> np.ndarray:
        """Each configuration's true failure probability under a noise model."""
        c = len(self.configs)
        if kind == "resampled":
            return self.failed.mean(axis=0)
        if kind == "shuffled":
            return np.full(c, self.failed.mean())
        if kind.startswith("failures"):
            return np.asarray(self.side_a, dtype=float) * float(kind.split()[1].rstrip("%")) / 100
        return np.zeros(c)

    def draw(self, kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
        """`size` seed rows of noise (size x configurations); NaN marks a failed run."""
        n, c = self.rows.shape
        if kind == "resampled":
            # smoothed bootstrap (Silverman 1986): a measured row plus a little Gaussian noise, so that a few draws
            # from eight rows are not exact ties (a real run never repeats another's value to the last digit)
            pick = rng.integers(0, n, size=size)
            return self.rows[pick] + rng.standard_normal((size, c)) * SMOOTH * np.nanstd(self.rows, axis=0, ddof=1)
        out = rng.multivariate_normal(np.zeros(c), self.cov, size=size, method="eigh")
        if kind == "normal":
            return out
        if kind == "heavy":
            return out - self.bad_db * (rng.random((size, c)) < self.bad_p)
        if kind == "outliers":
            sd = np.sqrt(np.diag(self.cov))
            fall = (rng.random((size, c)) < OUTLIER_P) & np.asarray(self.side_b, dtype=bool)
            return out - fall * rng.uniform(*OUTLIER_SDS, size=(size, c)) * sd
        if kind == "shuffled":
            counts = self.failed.sum(axis=1)[rng.integers(0, n, size=size)]
            for i, k in enumerate(counts):
                out[i, rng.choice(c, size=int(k), replace=False)] = np.nan
            return out
        if kind.startswith("failures"):
            return np.where(rng.random((size, c)) < self.fail_rates(kind), np.nan, out)
        raise ValueError(f"noise {kind!r} is not one of {', '.join(NOISES)}")

    def sided(self, configs: Mapping[str, Mapping[str, Any]], factor: str) -> "Noise":
        """The same noise with its one-sided models acting on `factor`: failures on its first level (sorted as
        main_effects sorts), outliers on its second."""
        levels = sorted({configs[c][factor] for c in self.configs}, key=str)
        return replace(
            self,
            side_a=tuple(configs[c][factor] == levels[0] for c in self.configs),
            side_b=tuple(configs[c][factor] == levels[1] for c in self.configs),
        )


def fit(
    values: Mapping[tuple[str, int], float], configs: list[str], failed: set[tuple[str, int]] = frozenset()
) -> Noise:
    """Residual rows from measured values on the seeds every configuration has: each trained value minus its
    configuration's trained mean, NaN where the run failed (`failed`: collapsed or diverged where measured)."""
    seeds = sorted({k for _, k in values})
    full = [k for k in seeds if all((c, k) in values for c in configs)]
    if len(full) < 3:
        raise ValueError(f"need >= 3 seeds that every configuration has, got {len(full)}")
    y = np.array([[math.nan if (c, k) in failed else values[(c, k)] for c in configs] for k in full], dtype=float)
    return Noise(configs=tuple(configs), rows=y - np.nanmean(y, axis=0))


# one study


def true_means(configs: Mapping[str, Mapping[str, Any]], effects: Mapping[str, float]) -> dict[str, float]:
    """Configuration means for two-level factors: the first level (sorted as main_effects sorts) sits +effect/2
    above the second, so each main effect's A - B equals its effect."""
    out = {}
    for cid, p in configs.items():
        mu = 0.0
        for f, eff in effects.items():
            levels = sorted({q[f] for q in configs.values()}, key=str)
            mu += eff / 2 if p[f] == levels[0] else -eff / 2
        out[cid] = mu
    return out


def truth(q: Question, effects: Mapping[str, float], fail: Mapping[str, float]) -> int:
    """+1 when side A is truly better, -1 when worse, 0 when neither: its value effect, else its failure rates
    (mean over the matched cells of A's failure probability minus B's: failing more is worse)."""
    e = effects[q.factor]
    if e:
        return 1 if e > 0 else -1
    more = sum(fail[a] - fail[b] for a, b in q.cells) / len(q.cells)
    return 0 if abs(more) < 1e-12 else (-1 if more > 0 else 1)


def study(
    configs: Mapping[str, Mapping[str, Any]],
    plan: seq.Plan,
    noise: Noise,
    kind: str,
    means: Mapping[str, float],
    rng: np.random.Generator,
) -> tuple[dict[str, seq.Decision], int]:
    """One simulated sequential study: (final decisions, runs used)."""
    questions = main_effects(configs)
    order = list(noise.configs)
    rows = noise.draw(kind, rng, plan.looks[-1])  # seed k's row, drawn up front: the same as drawing it when needed
    values: dict[tuple[str, int], float] = {}
    state = looks.State.from_json(None, order, plan)
    while True:
        for c, target in state.targets.items():
            j = order.index(c)
            for k in range(target):
                values.setdefault((c, k), means[c] + rows[k, j])  # NaN + mean stays NaN: a failure
        state, decisions = looks.advance(questions, values, plan, state)
        if state.done:
            return decisions, len(values)


# many studies


def upper95(k: int, n: int) -> float:
    """One-sided 95% Clopper-Pearson upper bound of a rate seen k times in n."""
    return 1.0 if k >= n else failure_interval(k, n, level=0.90)[1]


def run_case(
    configs: Mapping[str, Mapping[str, Any]],
    plan: seq.Plan,
    noise: Noise,
    kind: str,
    effects: Mapping[str, float],
    n: int,
    seed: int,
) -> dict[str, Any]:
    """`n` studies with the given true main effects: per question the share of each verdict and of verdicts
    decided by failures, the family's rate of any false better/worse (a difference called where there is none,
    or the wrong way round), runs used, looks reached."""
    rng = np.random.default_rng(seed)
    means = true_means(configs, effects)
    fail = dict(zip(noise.configs, noise.fail_rates(kind).tolist()))
    questions = main_effects(configs)
    signs = {q.name: truth(q, effects, fail) for q in questions}
    counts = {q.name: {v: 0 for v in (seq.BETTER, seq.WORSE, seq.EQUIVALENT, seq.CANNOT_TELL)} for q in questions}
    by_failures = {q.name: 0 for q in questions}
    family_false, runs, looks = 0, [], []
    for _ in range(n):
        decisions, used = study(configs, plan, noise, kind, means, rng)
        runs.append(used)
        looks.append(max(d.look for d in decisions.values()))
        false = False
        for q in questions:
            d = decisions[q.name]
            counts[q.name][d.verdict] += 1
            by_failures[q.name] += d.decided_by == seq.BY_FAILURES
            said = {seq.BETTER: 1, seq.WORSE: -1}.get(d.verdict, 0)
            false |= said != 0 and said != signs[q.name]
        family_false += false
    return {
        "noise": kind,
        "effects": dict(effects),
        "studies": n,
        "truth": signs,
        "failure_rates": {c: round(p, 4) for c, p in fail.items()},
        "verdicts": {q: {v: c / n for v, c in vs.items()} for q, vs in counts.items()},
        "decided_by_failures": {q: c / n for q, c in by_failures.items()},
        "family_false_difference": family_false / n,
        "family_false_difference_upper95": upper95(family_false, n),
        "mean_runs": float(np.mean(runs)),
        "runs_quantiles": np.quantile(runs, [0.1, 0.5, 0.9]).tolist(),
        "looks": {str(k): looks.count(k) / n for k in range(1, len(plan.looks) + 1)},
    }


# the proof: every case the targets name


TARGET_FALSE_DIFFERENCE, TARGET_FALSE_DIFFERENCE_UPPER = 0.05, 0.06
TARGET_FALSE_EQUIVALENT, TARGET_POWER = 0.05, 0.80


def cases(factors: list[str], margin: float, signs: Mapping[str, int] | None = None) -> dict[str, dict[str, float]]:
    """True main effects of the standard cases for a two-factor design. `signs`: the direction each factor's
    effect takes where it has one (default + for the first, - for the second): the side that fails more is given
    the lower value, so a case never sets a value effect against a failure difference."""
    f, g = factors
    sf, sg = (signs or {}).get(f, 1), (signs or {}).get(g, -1)
    return {
        "no difference": {f: 0.0, g: 0.0},
        "at the margin": {f: sf * margin, g: sg * margin},
        "twice the margin": {f: 2 * sf * margin, g: 2 * sg * margin},
        "one real, one null": {f: 2 * sf * margin, g: 0.0},
    }


def failure_signs(configs: Mapping[str, Mapping[str, Any]], noise: Noise, kind: str) -> dict[str, int]:
    """Per factor, -1 where its first side fails more under the noise model (its effects then point that way)."""
    fail = dict(zip(noise.configs, noise.fail_rates(kind).tolist()))
    out = {}
    for q in main_effects(configs):
        more = sum(fail[a] - fail[b] for a, b in q.cells)
        if abs(more) > 1e-12:
            out[q.factor] = -1 if more > 0 else 1
    return out


def judge(case: str, result: dict[str, Any], configs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The case's error rates against their targets: false better/worse per family (wherever a question can be
    called the wrong way), false "equivalent" where an effect is +-margin, power where it is +-2 margin."""
    questions = {q.name: q for q in main_effects(configs)}
    effects, n = result["effects"], result["studies"]
    out: dict[str, Any] = {
        "false_difference": {
            "rate": result["family_false_difference"],
            "upper95": result["family_false_difference_upper95"],
            "target": f"<= {TARGET_FALSE_DIFFERENCE:.0%}, upper bound <= {TARGET_FALSE_DIFFERENCE_UPPER:.0%}",
            "pass": result["family_false_difference"] <= TARGET_FALSE_DIFFERENCE
            and result["family_false_difference_upper95"] <= TARGET_FALSE_DIFFERENCE_UPPER,
        }
    }
    at_margin = [m for m, q in questions.items() if effects[q.factor] != 0 and case == "at the margin"]
    if at_margin:
        rate = max(result["verdicts"][m][seq.EQUIVALENT] for m in at_margin)
        out["false_equivalent"] = {
            "rate": rate,
            "upper95": upper95(round(rate * n), n),
            "target": f"<= {TARGET_FALSE_EQUIVALENT:.0%}",
            "pass": rate <= TARGET_FALSE_EQUIVALENT,
        }
    real = [m for m, q in questions.items() if effects[q.factor] != 0 and case != "at the margin"]
    if real:
        power = min(result["verdicts"][m][seq.BETTER if effects[questions[m].factor] > 0 else seq.WORSE] for m in real)
        out["power"] = {"rate": power, "target": f">= {TARGET_POWER:.0%}", "pass": power >= TARGET_POWER}
    failing = [m for m, q in questions.items() if effects[q.factor] == 0 and result["truth"][m] != 0]
    if failing:  # no target: how often a difference that is only in the failure rates is found
        out["failure_found"] = {
            "rate": min(result["verdicts"][m][seq.BETTER if result["truth"][m] > 0 else seq.WORSE] for m in failing)
        }
    return out


def fixed_design_runs(
    configs: Mapping[str, Mapping[str, Any]],
    plan: seq.Plan,
    noise: Noise,
    kind: str,
    effects: Mapping[str, float],
    power: float,
    n: int,
    seed: int,
    most: int = 40,
) -> dict[str, Any]:
    """The smallest fixed number of seeds (one look, the same tests) whose power reaches `power`: its runs."""
    questions = main_effects(configs)
    for seeds in range(2, most + 1):
        fixed = seq.Plan(looks=(seeds,), margin=plan.margin, alpha=plan.alpha, maximize=plan.maximize)
        r = run_case(configs, fixed, noise, kind, effects, n, seed)
        got = min(r["verdicts"][q.name][seq.BETTER if effects[q.factor] > 0 else seq.WORSE] for q in questions)
        if got >= power:
            return {"seeds": seeds, "runs": seeds * len(configs), "power": got}
    return {"seeds": None, "runs": None, "power": None}
