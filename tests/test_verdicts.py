"""Verdicts: the Student-t tail and Welch's test against SciPy, the words chosen, the compare CLI."""

import csv

import pytest
import scipy.special
import scipy.stats

from chyvae_ext.experiments.__main__ import main
from chyvae_ext.experiments.verdicts import (
    betainc,
    compare_line,
    parse_setting,
    setting_values,
    student_t_quantile,
    student_t_sf,
    verdict,
    welch,
)


@pytest.mark.parametrize(("a", "b", "x"), [(0.5, 0.5, 0.3), (2.5, 0.5, 0.9), (10.0, 3.0, 0.2), (0.7, 0.5, 0.999),
                                           (1.0, 1.0, 0.0), (3.0, 0.5, 1.0)])
def test_betainc_against_scipy(a, b, x):
    assert betainc(a, b, x) == pytest.approx(scipy.special.betainc(a, b, x), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(("t", "df"), [(0.3, 1.2), (2.0, 3.7), (-1.5, 2.0), (8.0, 50.0), (0.0, 4.0), (30.0, 1.0)])
def test_student_t_tail_and_quantile_against_scipy(t, df):
    assert student_t_sf(t, df) == pytest.approx(scipy.stats.t.sf(t, df), rel=1e-10, abs=1e-15)
    assert student_t_quantile(0.975, df) == pytest.approx(scipy.stats.t.ppf(0.975, df), rel=1e-9)


@pytest.mark.parametrize(("a", "b"), [([0.76, 0.74, 0.81], [0.70, 0.73]), ([31.0, 31.2], [47.5, 47.9, 47.8, 48.1]),
                                      ([0.5, 0.6, 0.55, 0.52, 0.58], [0.5, 0.51, 0.49, 0.6, 0.57])])
def test_welch_against_scipy(a, b):
    got = welch(a, b)
    ref = scipy.stats.ttest_ind(a, b, equal_var=False)
    assert got.t == pytest.approx(ref.statistic, rel=1e-12)
    assert got.df == pytest.approx(ref.df, rel=1e-12)
    assert got.p == pytest.approx(ref.pvalue, rel=1e-9)
    interval = ref.confidence_interval(0.95)
    assert got.ci95 == pytest.approx((interval.low, interval.high), rel=1e-8)


def test_verdict_words_follow_the_direction_and_the_test():
    assert verdict(welch([0.9, 0.91, 0.92], [0.5, 0.51, 0.52])).startswith("consistent with the claim (p = 0.000")
    assert verdict(welch([0.5, 0.51, 0.52], [0.9, 0.91, 0.92])).startswith("not reproduced: the opposite holds here")
    assert verdict(welch([0.7, 0.8], [0.72, 0.75])) .startswith("cannot tell at this length (p = ")
    assert verdict(welch([30.0, 30.5, 31.0], [47.0, 47.5, 48.0]), higher_is_better=False).startswith("consistent")
    assert "2 and 2 seeds" in verdict(welch([0.7, 0.8], [0.72, 0.75]))


@pytest.mark.parametrize(("a", "b", "match"), [
    ([0.7], [0.7, 0.8], r"welch: a needs two or more values \(one per training seed\), got 1"),
    ([0.7, 0.8], [], r"welch: b needs two or more values .*got 0"),
    ([0.7, 0.7], [0.8, 0.8], r"welch: both groups have no spread"),
])
def test_welch_bad_input_is_named(a, b, match):
    with pytest.raises(ValueError, match=match):
        welch(a, b)


ROWS = [
    {"run": "c0", "model": "chyvae", "value": 50.0, "seed": 0, "factor_vae": 0.80, "state": "finished"},
    {"run": "c1", "model": "chyvae", "value": 50.0, "seed": 1, "factor_vae": 0.84, "state": "finished"},
    {"run": "j0", "model": "chyvae", "value": 50.0, "variant": "posterior_jitter 0.0001", "seed": 0,
     "factor_vae": 0.70, "state": "finished"},
    {"run": "j1", "model": "chyvae", "value": 50.0, "variant": "posterior_jitter 0.0001", "seed": 1,
     "factor_vae": 0.74, "state": "finished"},
    {"run": "b0", "model": "betavae", "value": 4.0, "seed": 0, "factor_vae": 0.70, "state": "finished"},
    {"run": "b1", "model": "betavae", "value": 4.0, "seed": 1, "state": "finished"},
]


def test_settings_pick_their_rows_and_variants():
    assert parse_setting("chyvae=50:posterior_jitter 0.0001") == ("chyvae", 50.0, "posterior_jitter 0.0001")
    assert setting_values(ROWS, "chyvae=50", "factor_vae") == [0.80, 0.84]
    assert setting_values(ROWS, "chyvae=50:posterior_jitter 0.0001", "factor_vae") == [0.70, 0.74]
    line = compare_line(ROWS, "chyvae=50", "chyvae=50:posterior_jitter 0.0001", "factor_vae")
    assert line.startswith("factor_vae: chyvae=50 0.8200 (n = 2) vs chyvae=50:posterior_jitter 0.0001 0.7200 (n = 2)")
    assert "difference +0.1000" in line


@pytest.mark.parametrize(("spec", "metric", "match"), [
    ("chyvae", "factor_vae", r"a setting must be MODEL=VALUE\[:VARIANT\] .*got 'chyvae'"),
    ("dipvae1=10", "factor_vae", r"no run of 'dipvae1=10' among the rows"),
    ("betavae=4", "factor_vae", r"runs b1 of 'betavae=4' have no 'factor_vae'"),
])
def test_setting_bad_input_is_named(spec, metric, match):
    with pytest.raises(ValueError, match=match):
        setting_values(ROWS, spec, metric)


def test_compare_cli_prints_the_test_and_names_a_missing_file(tmp_path, capsys):
    path = tmp_path / "results.csv"
    keys = ["run", "model", "hyper", "value", "seed", "step", "state", "variant", "factor_vae"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        for r in ROWS[:4]:
            writer.writerow({"hyper": "nu", "step": 10, **r})
    assert main(["compare", str(path), "--a", "chyvae=50", "--b", "chyvae=50:posterior_jitter 0.0001"]) == 0
    assert "Welch t = " in capsys.readouterr().out
    assert main(["compare", str(tmp_path / "none.csv"), "--a", "chyvae=50", "--b", "betavae=4"]) == 2
    assert "CSV " in capsys.readouterr().err
