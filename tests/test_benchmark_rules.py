"""Choice rules the benchmarks apply to validation scores (pure functions, no training)."""

import pytest

from benchmarks.distillation import recovery_choice

PLAIN_A, PLAIN_B = ("plain", "images", 10), ("plain", "mixup", 40)
KD_40, KD_80 = ("KD", "mixup", 40), ("KD", "mixup", 80)
CELLS = [PLAIN_A, PLAIN_B, KD_40, KD_80]
SEEDS = (0, 1, 2)


def scores(**per_cell):
    """``val`` for recovery_choice from ``name=(seed 0, seed 1, seed 2)`` accuracies."""
    named = {"plain_a": PLAIN_A, "plain_b": PLAIN_B, "kd_40": KD_40, "kd_80": KD_80}
    return {(named[k], s): a for k, accs in per_cell.items()
            for s, a in zip(SEEDS, accs, strict=True)}


def test_a_lead_within_the_seeds_noise_keeps_the_recorded_recipe():
    # seed 0 alone would pick 80 views (90.58 vs 90.20); over three seeds 40 views has the
    # best mean, so nothing changes
    val = scores(plain_a=(89.66, 89.5, 89.62), plain_b=(88.82, 89.4, 89.14),
                 kd_40=(90.2, 90.4, 90.78), kd_80=(90.58, 90.18, 90.38))
    best, kd, lead, se = recovery_choice(val, CELLS, SEEDS, KD_40)
    assert best == {"plain": PLAIN_A, "KD": KD_40}
    assert kd == KD_40 and lead == 0.0 and se == 0.0
    # the best mean leads, but by less than one standard error of its per-seed lead
    val = scores(plain_a=(89.0,) * 3, plain_b=(88.0,) * 3,
                 kd_40=(90.2, 90.4, 90.8), kd_80=(90.6, 90.2, 90.9))
    best, kd, lead, se = recovery_choice(val, CELLS, SEEDS, KD_40)
    assert best["KD"] == KD_80 and kd == KD_40
    assert lead == pytest.approx(0.1) and lead < se


def test_a_lead_on_every_seed_overturns_the_recorded_recipe():
    val = scores(plain_a=(89.0,) * 3, plain_b=(89.3, 89.2, 89.4),
                 kd_40=(90.2, 90.4, 90.8), kd_80=(90.5, 90.6, 91.2))
    best, kd, lead, se = recovery_choice(val, CELLS, SEEDS, KD_40)
    assert best["plain"] == PLAIN_B        # the strongest control, whichever it is
    assert kd == KD_80 and lead == pytest.approx(0.3) and lead > se > 0


def test_one_seed_has_no_spread_so_any_lead_counts():
    val = {(c, 0): a for c, a in zip(CELLS, (89.0, 88.0, 90.2, 90.3), strict=True)}
    best, kd, lead, se = recovery_choice(val, CELLS, (0,), KD_40)
    assert kd == KD_80 and se == 0.0 and lead == pytest.approx(0.1)
