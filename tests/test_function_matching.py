"""Distillation as function matching: the bank of views (function_matching, students.fm_student)."""

import numpy as np
import pytest

from pruning_kit import distill, models, students
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
