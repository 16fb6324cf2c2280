"""Distillation as function matching: views, mixup views, the mirror-averaged teacher
(function_matching, students.fm_student, students.recovered_mlp)."""

import numpy as np
import pytest

from pruning_kit import distill, models, students, zoo
from pruning_kit import function_matching as fm


def images(n=6, size=8, seed=0):
    return np.random.default_rng(seed).random((n, size, size, 1)).astype(np.float32)


def test_views_are_flips_and_shifts_of_their_image():
    x = np.zeros((1, 9, 9, 1), np.float32)
    x[0, 4, 2, 0] = 1.0                                   # one lit pixel, left of centre
    views = fm.augmented_views(x, 40, seed=1, max_shift=2)
    plain = {(4 + dy, 2 + dx) for dy in range(-2, 3) for dx in range(-2, 3)}
    mirrored = {(4 + dy, 6 + dx) for dy in range(-2, 3) for dx in range(-2, 3)}
    seen = []
    for v in views[:, 0, :, :, 0]:
        (r, c), = np.argwhere(v)                          # shifted by 2 at most: inside
        assert (r, c) in plain | mirrored
        seen.append("mirrored" if (r, c) in mirrored - plain else
                    "plain" if (r, c) in plain - mirrored else "either")
    assert seen.count("plain") > 5 and seen.count("mirrored") > 5
    assert np.array_equal(views, fm.augmented_views(x, 40, seed=1, max_shift=2))
    assert not np.array_equal(views, fm.augmented_views(x, 40, seed=2, max_shift=2))


def test_without_shift_a_view_is_the_image_or_its_mirror():
    x = images()
    for v in fm.augmented_views(x, 4, seed=0, max_shift=0):
        for img, out in zip(x, v, strict=True):
            assert np.array_equal(out, img) or np.array_equal(out, img[:, ::-1])


def test_bank_holds_the_teachers_logits_on_exactly_those_views():
    teacher = models.small_cnn((2, 4), image_size=8, seed=0)
    teacher.train()
    x = images()
    bank = fm.view_bank(teacher, x, 3, seed=5, max_shift=1)
    assert bank.views == 3 and bank.logits.shape == (3, 6, 10)
    for v in range(3):
        np.testing.assert_allclose(bank.logits[v], distill.teacher_logits(teacher, bank.x[v]),
                                   rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(bank.x, fm.augmented_views(x, 3, seed=5, max_shift=1))
    assert teacher.conv1.kernel is not None and teacher.bn1.use_running_average is False


def test_budget_reads_the_first_views_once_each():
    teacher = models.small_cnn((2, 4), image_size=8, seed=0)
    bank = fm.view_bank(teacher, images(), 4, max_shift=1)
    labels = np.arange(6)
    x, y, logits = fm.budget(bank, labels, 2)
    assert x.shape == (12, 8, 8, 1) and logits.shape == (12, 10)
    np.testing.assert_array_equal(y, np.tile(labels, 2))
    np.testing.assert_array_equal(x[6:], bank.x[1])
    np.testing.assert_array_equal(logits[6:], bank.logits[1])


def test_bad_input_says_what_to_do():
    teacher = models.small_cnn((2, 4), image_size=8, seed=0)
    bank = fm.view_bank(teacher, images(), 2, max_shift=1)
    with pytest.raises(ValueError, match="holds 2 views.*views=3"):
        fm.budget(bank, np.arange(6), 3)
    with pytest.raises(ValueError, match="pass their 6 labels"):
        fm.budget(bank, np.arange(5), 1)
    with pytest.raises(ValueError, match="NHWC"):
        fm.augmented_views(np.zeros((3, 64)), 2)
    with pytest.raises(ValueError, match="views must be an integer"):
        fm.augmented_views(images(), 0)


def test_fm_student_needs_a_bank_to_train_and_both_kd_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNING_KIT_CHECKPOINTS", str(tmp_path))
    from pruning_kit import data
    ds = data.load_fashion_mnist()
    with pytest.raises(ValueError, match="both temperature and alpha"):
        students.fm_student(0, epochs=4, temperature=2.0, dataset=ds)
    with pytest.raises(ValueError, match="not cached; pass bank="):
        students.fm_student(0, epochs=4, dataset=ds)


def test_mirror_average_is_the_mean_of_image_and_mirror_and_is_flip_invariant():
    teacher = models.small_cnn((2, 4), image_size=8, seed=0)
    x = images()
    both = fm.mirror_averaged_logits(teacher, x)
    one, mirrored = (distill.teacher_logits(teacher, v) for v in (x, x[:, :, ::-1]))
    np.testing.assert_allclose(both, (one + mirrored) / 2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fm.mirror_averaged_logits(teacher, x[:, :, ::-1]), both,
                               rtol=1e-5, atol=1e-5)
    assert not np.allclose(both, one, atol=1e-4)          # the average is not one pass
    bank = fm.view_bank(teacher, x, 2, max_shift=1, mirror_average=True)
    np.testing.assert_allclose(bank.logits[1], fm.mirror_averaged_logits(teacher, bank.x[1]),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="NHWC"):
        fm.mirror_averaged_logits(teacher, np.zeros((3, 64), np.float32))


def test_mixup_views_blend_each_image_with_its_partner():
    x = np.random.default_rng(0).random((5, 12)).astype(np.float32)   # flat, MLP-style
    m = fm.mixup_views(x, 3, seed=4, concentration=0.4)
    assert m.x.shape == (15, 12) and m.partner.shape == m.lam.shape == (15,)
    assert np.all((m.lam >= 0.5) & (m.lam <= 1.0))
    own = np.tile(np.arange(5), 3)
    np.testing.assert_allclose(m.x, m.lam[:, None] * x[own]
                               + (1 - m.lam[:, None]) * x[m.partner], rtol=1e-6)
    for v in range(3):                                     # each view pairs by a permutation
        assert sorted(m.partner[5 * v:5 * v + 5]) == list(range(5))
    again = fm.mixup_views(x, 3, seed=4, concentration=0.4)
    np.testing.assert_array_equal(again.x, m.x)
    assert not np.array_equal(fm.mixup_views(x, 3, seed=5).x, m.x)


def test_mixed_labels_put_lam_on_the_image_and_the_rest_on_its_partner():
    x = np.random.default_rng(1).random((4, 2, 2, 1)).astype(np.float32)
    labels = np.array([0, 1, 2, 1])
    m = fm.mixup_views(x, 2, seed=0)
    probs = np.exp(m.label_logits(labels, 3))
    own = np.tile(labels, 2)
    for row in range(8):
        expected = np.zeros(3)
        expected[own[row]] += m.lam[row]
        expected[labels[m.partner[row]]] += 1 - m.lam[row]
        np.testing.assert_allclose(probs[row], expected, atol=1e-5)
    with pytest.raises(ValueError, match="one label per image"):
        m.label_logits(labels[:3], 3)
    with pytest.raises(ValueError, match="num_classes"):
        m.label_logits(labels, 2)
    with pytest.raises(ValueError, match="at least two images"):
        fm.mixup_views(x[:1], 2)
    with pytest.raises(ValueError, match="concentration"):
        fm.mixup_views(x, 2, concentration=0.0)


def test_recovered_mlp_refuses_views_for_plain_fine_tuning(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNING_KIT_CHECKPOINTS", str(tmp_path))
    from pruning_kit import data
    ds = data.load_fashion_mnist()
    with pytest.raises(ValueError, match="mixup_views is for KD"):
        students.recovered_mlp(0, mixup_views=40, dataset=ds)
    with pytest.raises(ValueError, match="mixup_views must be an integer"):
        students.recovered_mlp(0, temperature=1.0, alpha=1.0, mixup_views=0, dataset=ds)


def test_fm_names_keep_a_one_pass_teachers_students_apart(monkeypatch):
    assert students.fm_name(16) == "student_cnn8x16_fm_plain_e16"
    assert students.fm_name(4, 2.0, 0.5) == "student_cnn8x16_fm_kd_T2_a0.5_e4"
    with pytest.raises(ValueError, match="both temperature and alpha"):
        students.fm_name(4, 2.0)
    monkeypatch.setattr(students, "TEACHER_MIRROR_AVERAGE", False)
    assert students.fm_name(16) == "student_cnn8x16_fm_plain_e16_onepass"
    x = images()
    teacher = models.small_cnn((2, 4), image_size=8, seed=0)
    np.testing.assert_allclose(students.teacher_answer(teacher, x),
                               distill.teacher_logits(teacher, x), rtol=1e-6, atol=1e-6)


def test_fm_widths_name_the_student_and_bad_widths_are_refused():
    assert students.fm_name(16, 2.0, 0.5, widths=(10, 20)) == "student_cnn10x20_fm_kd_T2_a0.5_e16"
    assert students.fm_name(16, widths=students.FM["widths"]) == students.fm_name(16)
    assert students.fm_name(16, widths=(np.int64(6), 12)) == "student_cnn6x12_fm_plain_e16"
    for bad in [(8,), (8, 0), (8.0, 16), "8x16", (True, 16)]:
        with pytest.raises(ValueError, match="two positive channel counts"):
            students.fm_name(16, widths=bad)


def test_fm_budgets_fit_the_bank_and_every_curve_student_is_committed():
    fm = students.FM
    assert fm["epochs"] in fm["curve"] and max(fm["curve"]) <= fm["views"]
    mix = students.FM_MIXUP_CHOSEN
    grid = [students.fm_name(fm["epochs"], mixup=mix)] + [
        students.fm_name(fm["epochs"], t, a, mixup=mix) for t, a in students.FM_GRID]
    missing = [n for n in grid if not zoo.checkpoint_path(n, 0).exists()]
    assert not missing, f"run {students.STUDENTS_COMMAND} to make {missing}"
    chosen = students.kd_choice(students.fm_grid(0, mixup=mix, progress=False))  # validation
    names = [students.fm_name(e, *cell, mixup=mix) for e in fm["curve"]
             for cell in ((None, None), chosen)]
    missing = [n for n in names if not zoo.checkpoint_path(n, 0).exists()]
    assert not missing, f"run {students.STUDENTS_COMMAND} to make {missing}"


def test_a_bigger_bank_starts_with_the_smaller_banks_views():
    # the students of the shorter budgets read the first views only, whatever the bank's size
    x = images()
    np.testing.assert_array_equal(fm.augmented_views(x, 2, seed=3),
                                  fm.augmented_views(x, 5, seed=3)[:2])


def test_a_mixup_bank_blends_each_view_with_the_same_view_of_its_partner():
    teacher = models.small_cnn((2, 4), image_size=8, seed=0)
    x = images()
    bank = fm.view_bank(teacher, x, 3, seed=2, max_shift=1, mixup=0.4)
    plain = fm.augmented_views(x, 3, seed=2, max_shift=1)
    assert bank.partner.shape == bank.lam.shape == (3, 6)
    assert np.all((bank.lam >= 0.5) & (bank.lam <= 1.0)) and np.any(bank.lam < 0.99)
    for v in range(3):
        assert sorted(bank.partner[v]) == list(range(6))
        w = bank.lam[v][:, None, None, None]
        np.testing.assert_allclose(bank.x[v], w * plain[v] + (1 - w) * plain[v][bank.partner[v]],
                                   rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(bank.logits[v], distill.teacher_logits(teacher, bank.x[v]),
                                   rtol=1e-5, atol=1e-5)
    smaller = fm.view_bank(teacher, x, 2, seed=2, max_shift=1, mixup=0.4)
    np.testing.assert_array_equal(smaller.x, bank.x[:2])          # the first views are fixed
    labels = np.array([0, 1, 2, 3, 4, 5])
    probs = np.exp(bank.label_logits(labels, 10))
    assert probs.shape == (3, 6, 10)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(probs[1, np.arange(6), labels], np.where(
        bank.partner[1] == labels, 1.0, bank.lam[1]), rtol=1e-5, atol=2e-5)
    no_mix = fm.view_bank(teacher, x, 2, seed=2, max_shift=1)
    assert no_mix.partner is None
    np.testing.assert_allclose(np.exp(no_mix.label_logits(labels, 10)).argmax(-1),
                               np.tile(labels, (2, 1)))
    with pytest.raises(ValueError, match="pass their 6 labels"):
        bank.label_logits(labels[:5], 10)
    assert bank.mixup == 0.4 and no_mix.mixup is None
    with pytest.raises(ValueError, match="mixup must be"):
        fm.view_bank(teacher, x, 2, mixup=0.0)
    with pytest.raises(ValueError, match="concentration.*fm_bank takes mixup=True"):
        fm.view_bank(teacher, x, 2, mixup=True)


def test_a_mixup_student_refuses_a_bank_without_blends(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNING_KIT_CHECKPOINTS", str(tmp_path))
    from pruning_kit import data
    ds = data.load_fashion_mnist()
    teacher = models.small_cnn((2, 4), seed=0)
    bank = fm.view_bank(teacher, ds.x_train[:8], 1, max_shift=1)
    assert students.fm_name(16, 1.0, 1.0, mixup=True) == "student_cnn8x16_fmmix_kd_T1_a1_e16"
    with pytest.raises(ValueError, match="with mixup; pass bank=.*mixup=True"):
        students.fm_student(0, epochs=1, mixup=True, bank=lambda: bank, dataset=ds)
    other = fm.view_bank(teacher, ds.x_train[:8], 1, max_shift=1, mixup=0.2)
    with pytest.raises(ValueError, match="blended with concentration 0.2.*FM_MIXUP is 0.4"):
        students.fm_student(0, epochs=1, mixup=True, bank=lambda: other, dataset=ds)


def test_the_views_comparison_is_committed():
    # notebook 02 and the benchmark score both views at the reported budget (seed 0)
    names = [students.fm_name(students.FM["epochs"], *cell, mixup=m)
             for m in (False, True) for cell in ((None, None), *students.FM_GRID)]
    missing = [n for n in names if not zoo.checkpoint_path(n, 0).exists()]
    assert not missing, f"run {students.STUDENTS_COMMAND} to make {missing}"
