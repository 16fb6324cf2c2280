"""Notebook-facing helpers: widgets driven headlessly, self-check cells."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402

from pruning_kit import checks, models, widgets  # noqa: E402


def test_latency_explorer_reacts_to_controls(digits):
    mlps = {"small": models.MLP(64, (8,), rngs=nnx.Rngs(0)),
            "wide": models.MLP(64, (256, 256), rngs=nnx.Rngs(0))}
    ex = widgets.LatencyExplorer(mlps, digits.x_test[:10], batch_sizes=(1, 4, 32), runs=3,
                                 progress=False)
    assert set(ex.results) == {(n, b) for n in mlps for b in (1, 4, 32)}
    assert ex.readout.startswith("small, batch 32:")
    ex.batch_slider.value = 4
    assert ex.readout.startswith("small, batch 4:")
    ex.model_dropdown.value = "wide"
    assert ex.readout.startswith("wide, batch 4:")
    assert ex.results[("wide", 32)].batch_size == 32  # tiled past the 10 inputs
    assert all(v > 0 for v in ex.per_example_us("wide"))


def test_latency_explorer_bad_input(digits):
    with pytest.raises(ValueError, match="at least one model"):
        widgets.LatencyExplorer({}, digits.x_test)
    with pytest.raises(ValueError, match="batch sizes"):
        widgets.LatencyExplorer({"m": models.MLP(64, (8,), rngs=nnx.Rngs(0))}, digits.x_test,
                                batch_sizes=(0, 4))


def test_checks_accept_right_and_hint_on_wrong(capsys):
    checks.check_param_count(266_610)
    assert capsys.readouterr().out.startswith("Correct: 266,610")
    with pytest.raises(checks.CheckFailed, match="bias"):
        checks.check_param_count(784 * 300 + 300 * 100 + 100 * 10)
    with pytest.raises(checks.CheckFailed, match="a\\*b weights"):
        checks.check_param_count(1)
    checks.check_macs(266_200)
    with pytest.raises(checks.CheckFailed, match="FLOPs"):
        checks.check_macs(2 * 266_200)
    checks.check_bytes(266_610, 266_610, 8)
    with pytest.raises(checks.CheckFailed, match="bits, not bytes"):
        checks.check_bytes(266_610 * 8, 266_610, 8)
    with pytest.raises(checks.CheckFailed, match="number"):
        checks.check_bytes("lots", 10, 8)
    checks.check_choice("B", "b", {"a": "no", "b": "yes"})
    with pytest.raises(checks.CheckFailed, match="Not this one: no"):
        checks.check_choice("a", "b", {"a": "no", "b": "yes"})
    with pytest.raises(checks.CheckFailed, match="one of"):
        checks.check_choice("z", "b", {"a": "no", "b": "yes"})


def test_check_bytes_rounds_up_to_whole_bytes(capsys):
    # 20,006 values at 3 bits are 60,018 bits: 7,502 bytes and 2 bits, so 7,503 bytes stored
    checks.check_bytes(7_503, 20_006, 3)
    assert "Correct: 7,503 bytes" in capsys.readouterr().out
    checks.check_bytes(20_006 * 3 / 8, 20_006, 3)      # the exact fraction is accepted too
    assert "Correct: 7,503 bytes" in capsys.readouterr().out
    with pytest.raises(checks.CheckFailed, match="Round up"):
        checks.check_bytes(7_502, 20_006, 3)           # the last, partly filled byte is lost
    with pytest.raises(checks.CheckFailed, match="Not quite"):
        checks.check_bytes(7_504, 20_006, 3)
    with pytest.raises(checks.CheckFailed, match="bits, not bytes"):
        checks.check_bytes(60_018, 20_006, 3)
    checks.check_bytes(133_305, 266_610, 4)             # whole bytes: the same number
    assert capsys.readouterr().out == "Correct: 133,305 bytes for 266,610 values at 4 bits.\n"
    with pytest.raises(checks.CheckFailed, match="Not quite"):
        checks.check_bytes(133_304, 266_610, 4)


def test_bit_width_explorer_reacts_and_counts_real_bytes(digits, trained_mlp):
    from pruning_kit import train

    model = trained_mlp                    # only read: the explorer works on its own copy
    ex = widgets.BitWidthExplorer(model, digits.x_test, digits.y_test, bits_options=(2, 4, 8),
                                  progress=False)
    assert set(ex.results) == {(b, pc) for b in (2, 4, 8) for pc in (True, False)}
    # accuracies are fractions; the readout shows them in percent
    assert ex.float_accuracy == train.evaluate(model, digits.x_test, digits.y_test) > 0.9
    r8, r2 = ex.results[(8, True)], ex.results[(2, True)]
    assert ex.readout.startswith(f"8-bit per-channel: accuracy {100 * r8['accuracy']:.2f}% (")
    assert abs(r8["accuracy"] - ex.float_accuracy) < 0.02
    assert r2["bytes"] < ex.results[(4, True)]["bytes"] < r8["bytes"] < 4 * 2410
    ex.bits_slider.value = 2
    ex.per_channel_toggle.value = False
    assert ex.readout.startswith("2-bit per-tensor")
    assert ex.last_update_ms > 0
    with pytest.raises(ValueError, match="between 2 and 16"):
        widgets.BitWidthExplorer(model, digits.x_test, digits.y_test, bits_options=(1, 4))


def test_check_scale_hints(capsys):
    checks.check_scale(0.5 / 127, 0.5, 8)
    assert "0.00393701" in capsys.readouterr().out
    with pytest.raises(checks.CheckFailed, match="127, not 128"):
        checks.check_scale(0.5 / 128, 0.5, 8)
    with pytest.raises(checks.CheckFailed, match="asymmetric"):
        checks.check_scale(1.0 / 255, 0.5, 8)
    with pytest.raises(checks.CheckFailed, match="largest code, 7"):
        checks.check_scale(0.2, 0.5, 4)


def test_temperature_explorer_softens_with_t():
    logits = np.array([[8.0, 3.0, 0.0, -2.0], [0.0, 1.0, 6.0, 2.0]])
    images = np.zeros((2, 8, 8, 1))
    ex = widgets.TemperatureExplorer(logits, images, np.array([0, 2]), ["a", "b", "c", "d"],
                                     temperatures=(1, 4, 16))
    assert ex.readout.startswith("T = 1: a 0.99")
    cold = ex.probabilities(0, 1.0)
    ex.temperature_slider.value = 16
    hot = ex.probabilities(0, 16.0)
    assert hot[0] < cold[0] and hot[3] > cold[3]
    assert np.isclose(hot.sum(), 1.0)
    assert ex.readout.startswith("T = 16: a")
    ex.image_dropdown.value = 1
    assert ex.readout.startswith("T = 16: c")
    with pytest.raises(ValueError, match="temperatures must be > 0"):
        widgets.TemperatureExplorer(logits, images, np.array([0, 2]), list("abcd"),
                                    temperatures=(0, 1))
    with pytest.raises(ValueError, match="shape"):
        widgets.TemperatureExplorer(logits[:, :3], images, np.array([0, 2]), list("abcd"))


def test_moving_a_slider_does_not_pile_up_open_figures():
    import matplotlib.pyplot as plt

    logits = np.array([[8.0, 3.0, 0.0, -2.0], [0.0, 1.0, 6.0, 2.0]])
    ex = widgets.TemperatureExplorer(logits, np.zeros((2, 8, 8, 1)), np.array([0, 2]),
                                     list("abcd"), temperatures=(1, 2, 4, 8, 16))
    before = len(plt.get_fignums())
    for t in (2, 4, 8, 16, 1, 2, 4, 8, 16, 1):
        ex.temperature_slider.value = t
    assert len(plt.get_fignums()) <= before
    assert ex._repr_mimebundle_()["image/png"]      # the last figure still renders


def test_rank_explorer_accuracy_grows_with_rank_and_full_rank_is_dense(digits, trained_mlp):
    mlp = trained_mlp                      # only read: the explorer works on its own copy
    ex = widgets.RankExplorer(mlp, digits.x_test, digits.y_test, ranks=(1, 4, 32),
                              batch_size=8, progress=False)
    assert set(ex.results) == {None, 1, 4, 32}
    assert 0.9 < ex.dense_accuracy <= 1.0                       # a fraction
    assert ex.results[32]["accuracy"] == pytest.approx(ex.dense_accuracy, abs=0.005)
    assert ex.results[1]["accuracy"] < ex.results[32]["accuracy"]
    assert ex.results[4]["params"] == 4 * (64 + 32) + 32
    ex.rank_slider.value = 1
    assert ex.readout.startswith("rank 1: accuracy")
    with pytest.raises(ValueError, match="ranks must be in"):
        widgets.RankExplorer(mlp, digits.x_test, digits.y_test, ranks=(64,), progress=False)


def test_sparsity_explorer_prunes_exactly_and_accuracy_falls(digits, trained_mlp):
    mlp = trained_mlp                      # only read: the explorer works on its own copy
    ex = widgets.SparsityExplorer(mlp, digits.x_test, digits.y_test,
                                  sparsities=(0.0, 0.5, 0.99), progress=False)
    assert ex.results[(0.5, "layer")]["layers"] == {"layers/0/kernel": 0.5,
                                                    "layers/1/kernel": 0.5}
    assert ex.results[(0.99, "global")]["accuracy"] < ex.dense_accuracy - 0.20  # fractions
    assert mlp.layers[0].kernel[...].all()                      # the caller's model unpruned
    ex.scope_toggle.value = "global"
    r = ex.results[(0.5, "global")]
    assert ex.readout.startswith(f"50% global: accuracy {100 * r['accuracy']:.2f}% (")
    ex.sparsity_slider.value = 0.99
    assert ex.readout.startswith("99% global")
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        widgets.SparsityExplorer(mlp, digits.x_test, digits.y_test, sparsities=(1.0,))


def test_pruning_and_low_rank_checks(capsys):
    checks.check_zeros(27_000, 30_000, 0.9)
    assert capsys.readouterr().out.startswith("Correct: 27,000 zeros")
    with pytest.raises(checks.CheckFailed, match="kept"):
        checks.check_zeros(3_000, 30_000, 0.9)
    checks.check_low_rank_params(32 * 1084, 784, 300, 32)
    assert "(6.8x fewer)" in capsys.readouterr().out
    with pytest.raises(checks.CheckFailed, match="dense kernel"):
        checks.check_low_rank_params(784 * 300, 784, 300, 32)


def test_answer_key_is_a_stable_short_hash():
    import hashlib

    assert checks.answer_key("b") == hashlib.sha256(b"pruning_kit:b").hexdigest()[:12]
    assert checks.answer_key(" B ") == checks.answer_key("b")
    assert checks.answer_key("a") != checks.answer_key("b")


def test_answer_key_salted_with_the_options_differs_between_questions(capsys):
    q1 = {"a": "no: ...", "b": "yes: one MAC per weight."}
    q2 = {"a": "no: ...", "b": "yes: the bitmap."}
    keys = {checks.answer_key("b", q) for q in (q1, q2)} | {checks.answer_key("b")}
    assert len(keys) == 3                           # one answered question decodes no other
    assert checks.answer_key(" B ", {" A ": "no: ...", "b": q1["b"]}) == \
        checks.answer_key("b", q1)                  # the options' names are normalised too
    assert checks.answer_key("b", checks.seal(q1)) == checks.answer_key("b", q1)
    checks.check_choice("b", q1, key=checks.answer_key("b", q1))
    checks.check_choice("b", checks.seal(q1), key=checks.answer_key("b", q1))
    assert capsys.readouterr().out.count("Correct: yes: one MAC per weight.") == 2
    with pytest.raises(checks.CheckFailed, match="Not this one"):
        checks.check_choice("a", q1, key=checks.answer_key("b", q1))
    with pytest.raises(ValueError, match="again after editing"):   # q1's key on edited options
        checks.check_choice("b", q2, key=checks.answer_key("b", q1))
    with pytest.raises(ValueError, match="dict of options"):
        checks.answer_key("b", ["a", "b"])


def test_checks_print_blank_for_none_and_do_not_raise(capsys):
    opts = {"a": "no", "b": "yes"}
    for call in (lambda: checks.check_param_count(None), lambda: checks.check_macs(None),
                 lambda: checks.check_bytes(None, 10, 8), lambda: checks.check_scale(None, 0.5, 8),
                 lambda: checks.check_zeros(None, 10, 0.5),
                 lambda: checks.check_low_rank_params(None, 784, 300, 32),
                 lambda: checks.check_kd_factor(None, 0.9, 4),
                 lambda: checks.check_choice(None, opts, key=checks.answer_key("b"))):
        call()
        assert capsys.readouterr().out == checks.BLANK + "\n"


def test_check_choice_by_key_hides_the_answer(capsys):
    opts = {"a": "no: the hint for a", "b": "yes"}
    checks.check_choice(" B", opts, key=checks.answer_key("b"))
    assert capsys.readouterr().out == "Correct: yes\n"
    with pytest.raises(checks.CheckFailed, match="Not this one: no: the hint for a"):
        checks.check_choice("a", opts, key=checks.answer_key("b"))
    with pytest.raises(checks.CheckFailed, match="one of"):
        checks.check_choice("z", opts, key=checks.answer_key("b"))
    checks.check_choice("b", options=opts, correct="b")  # the old keyword form still works
    with pytest.raises(ValueError, match="matches none"):
        checks.check_choice("a", opts, key=checks.answer_key("c"))
    with pytest.raises(ValueError, match="exactly one"):
        checks.check_choice("a", opts)


def test_check_kd_factor_hints(capsys):
    checks.check_kd_factor(0.9 * 4**2, alpha=0.9, temperature=4)
    assert capsys.readouterr().out == "Correct: 14.4 = alpha * T^2.\n"
    with pytest.raises(checks.CheckFailed, match="squared"):
        checks.check_kd_factor(0.9 * 4, alpha=0.9, temperature=4)
    with pytest.raises(checks.CheckFailed, match="alpha weighs the soft"):
        checks.check_kd_factor(0.1 * 16, alpha=0.9, temperature=4)
    with pytest.raises(checks.CheckFailed, match="weighted by alpha"):
        checks.check_kd_factor(16, alpha=0.9, temperature=4)
