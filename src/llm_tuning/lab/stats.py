"""Means, standard deviations and Welch's t-test for a comparison's seeds (no scipy: the t distribution's tail
comes from the regularised incomplete beta function, computed by its continued fraction)."""

from __future__ import annotations

import math

ALPHA = 0.05  # two-sided: a difference with p >= ALPHA is "within noise"


def finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def mean_std(values) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1) of the finite values; std None with fewer than two."""
    v = finite(values)
    if not v:
        return None, None
    m = sum(v) / len(v)
    if len(v) < 2:
        return m, None
    return m, math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1, a - 1
    c, d = 1.0, 1 - qab * x / qap
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1 + aa * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-14:
            break
    return h


def betai(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(1 - x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1 - front * _betacf(b, a, 1 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with df degrees of freedom."""
    return betai(df / 2, 0.5, df / (df + t * t))


def welch(a, b) -> float | None:
    """Two-sided p-value of Welch's t-test between samples a and b (a sample of one value with no spread, such
    as the deterministic base model, makes it a one-sample t-test). None when there is no spread to test with."""
    a, b = finite(a), finite(b)
    if not a or not b:
        return None
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1) if len(a) > 1 else 0.0
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1) if len(b) > 1 else 0.0
    sa, sb = va / len(a), vb / len(b)
    if sa + sb == 0:
        return None if len(a) < 2 and len(b) < 2 else (1.0 if ma == mb else 0.0)
    df_terms = (sa ** 2 / (len(a) - 1) if len(a) > 1 else 0.0) + (sb ** 2 / (len(b) - 1) if len(b) > 1 else 0.0)
    df = (sa + sb) ** 2 / df_terms
    return t_two_sided_p((ma - mb) / math.sqrt(sa + sb), df)


def verdict(a, b, lower_is_better: bool = True) -> str:
    """'better' / 'worse' (a against b, significant at ALPHA), 'within noise', or 'n/a' (no spread: one seed)."""
    p = welch(a, b)
    if p is None:
        return "n/a"
    if p >= ALPHA:
        return "within noise"
    diff = mean_std(a)[0] - mean_std(b)[0]
    return "better" if (diff < 0) == lower_is_better else "worse"
