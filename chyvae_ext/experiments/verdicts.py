"""Verdicts on a claim "setting A beats setting B on a metric", with a stated test.

The test is Welch's unequal-variance t-test over training seeds: each run contributes one number (its
score, or, where ``collect --metric-seeds`` scored it under several metric seeds, their mean, so the
metric's own noise is inside the spread between runs). The Student-t tail is computed here from the
regularised incomplete beta function (no SciPy at run time; the tests check it against SciPy).

:func:`verdict` puts the result in the words the numbers support: "consistent with the claim" only
where the difference is in the claimed direction and the two-sided p is below ``alpha``; "the opposite
holds here" where it is significant the other way; otherwise "cannot tell" with the number of seeds.
"""

from __future__ import annotations

import dataclasses
import math
import statistics


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function, evaluated by the modified Lentz method."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return f


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), for a, b > 0 and 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc: x must be in [0, 1], got {x!r}")
    if x in (0.0, 1.0):
        return x
    log_front = a * math.log(x) + b * math.log1p(-x) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def student_t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` > 0 degrees of freedom (any real df, as Welch's test gives)."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


def student_t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p (bisection on :func:`student_t_sf`)."""
    lo, hi = -1e6, 1e6
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if 1.0 - student_t_sf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


@dataclasses.dataclass(frozen=True)
class Welch:
    """Welch's t-test of mean(a) - mean(b): the difference, its standard error, t, the
    Welch-Satterthwaite degrees of freedom, the two-sided p and the 95% interval of the difference."""

    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    diff: float
    se: float
    t: float
    df: float
    p: float
    ci95: tuple[float, float]


def welch(a: list[float], b: list[float]) -> Welch:
    """Welch's unequal-variance t-test; each list needs two or more values and not both without spread."""
    for name, xs in (("a", a), ("b", b)):
        if len(xs) < 2:
            raise ValueError(f"welch: {name} needs two or more values (one per training seed), got {len(xs)}")
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:
        raise ValueError("welch: both groups have no spread; a t-test cannot be taken")
    diff = statistics.fmean(a) - statistics.fmean(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    t = diff / se
    half = student_t_quantile(0.975, df) * se
    return Welch(len(a), len(b), statistics.fmean(a), statistics.fmean(b), diff, se, t, df,
                 min(1.0, 2.0 * student_t_sf(abs(t), df)), (diff - half, diff + half))


def verdict(result: Welch, *, higher_is_better: bool = True, alpha: float = 0.05) -> str:
    """The claim "A beats B" in the words the test supports (see the module's docstring)."""
    better = result.diff > 0 if higher_is_better else result.diff < 0
    seeds = f"{result.n_a} and {result.n_b} seeds"
    if result.p < alpha:
        return (f"consistent with the claim (p = {result.p:.3f}, {seeds})" if better
                else f"not reproduced: the opposite holds here (p = {result.p:.3f}, {seeds})")
    return f"cannot tell at this length (p = {result.p:.2f}, {seeds})"


def parse_setting(spec: str) -> tuple[str, float, str]:
    """"MODEL=VALUE" or "MODEL=VALUE:VARIANT" (collect's variant, e.g. "chyvae=50:posterior_jitter 0.0001")."""
    head, _, variant = spec.partition(":")
    model, eq, value = head.partition("=")
    try:
        return model.strip(), float(value), variant.strip()
    except ValueError:
        raise ValueError(
            f"a setting must be MODEL=VALUE[:VARIANT] (e.g. chyvae=50 or betavae=4), got {spec!r}"
        ) from None


def setting_values(rows: list[dict], spec: str, metric: str) -> list[float]:
    """The metric of every row of the setting ``spec`` (one per training seed), from collect's rows."""
    model, value, variant = parse_setting(spec)
    chosen = [r for r in rows if r.get("model") == model and float(r.get("value", "nan")) == value
              and (r.get("variant") or "") == variant]
    if not chosen:
        raise ValueError(f"no run of {spec!r} among the rows")
    missing = [r["run"] for r in chosen if r.get(metric) in (None, "")]
    if missing:
        raise ValueError(f"runs {', '.join(map(str, missing))} of {spec!r} have no {metric!r}")
    return [float(r[metric]) for r in chosen]


def compare_line(rows: list[dict], a: str, b: str, metric: str, *, higher_is_better: bool = True) -> str:
    """One line: both settings' means, the difference with its 95% interval, Welch's t, df, p, the verdict."""
    result = welch(setting_values(rows, a, metric), setting_values(rows, b, metric))
    lo, hi = result.ci95
    return (f"{metric}: {a} {result.mean_a:.4f} (n = {result.n_a}) vs {b} {result.mean_b:.4f} (n = {result.n_b}); "
            f"difference {result.diff:+.4f}, 95% interval [{lo:+.4f}, {hi:+.4f}], Welch t = {result.t:.2f}, "
            f"df = {result.df:.1f}: {verdict(result, higher_is_better=higher_is_better)}")
