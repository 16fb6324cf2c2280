"""Self-check cells for the notebooks ("Check your understanding"), and claim assertions.

:func:`claim` holds a lesson's prose to its numbers: a sentence that states a result
("per-channel beats per-tensor at 4 bits") sits next to ``claim(condition, "what the text
says", measured=values)``, which raises :class:`ClaimFailed` with the measured values
when the run no longer supports the sentence, so nbval fails instead of the course
quietly saying something false.

Each check takes the learner's answer, raises :class:`CheckFailed` with a hint when it is
wrong, and prints one fixed line when it is right, so a notebook re-run (and nbval) sees
the same output every time. An answer of ``None`` (the student edition's blank) prints
:data:`BLANK` and returns without raising, so an unanswered question does not stop a run.

A multiple-choice cell never shows its answer: it passes ``key=answer_key(letter, options)``,
a short hash salted with the question's options (so keys differ between questions), to
:func:`check_choice`; the lesson's text lists the options the learner chooses from. In the
student edition (:mod:`pruning_kit.classroom`) the options' feedback lines are
:func:`seal`-ed too, since a wrong option's feedback ("no: ...") would give the answer away
before the learner chooses. Both hide the answer
from a glance, not from a determined reader: a self-check is for the learner's own use.

Examples:
    >>> check_param_count(784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10)
    Correct: 266,610 parameters (weights plus one bias per output unit).
    >>> check_param_count(None)
    Not answered yet: replace None above with your answer and run the cell again.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence

#: What every ``check_*`` prints when the answer is still ``None``.
BLANK = "Not answered yet: replace None above with your answer and run the cell again."


def answer_key(letter, options: dict[str, str] | str | None = None) -> str:
    """The key that :func:`check_choice` compares an answer with (hides the right option).

    Args:
        letter: an option's name (``"b"``, ``"bitmap"``); case and surrounding spaces are
            ignored.
        options: the question's options (a dict, or :func:`seal`-ed). Given, they salt the
            hash, so the same letter gets a different key in every question and one
            answered question does not decode the others' keys. Edit an option's text and
            the key must be rebuilt.

    Returns:
        The first 12 hex digits of ``sha256("pruning_kit:" + letter [+ ":" + a digest of
        the options])``.

    Examples:
        >>> answer_key("b") == answer_key(" B ")
        True
        >>> opts = {"a": "no: ...", "b": "yes: one MAC per weight."}
        >>> answer_key("b", opts) == answer_key("b"), len(answer_key("b", opts))
        (False, 12)
    """
    text = "pruning_kit:" + str(letter).strip().lower()
    if options is not None:
        options = _unseal(options)
        if not isinstance(options, dict):
            raise ValueError(f"options must be the question's dict of options (or sealed), "
                             f"got {type(options).__name__}.")
        canonical = sorted((str(k).strip().lower(), str(v)) for k, v in options.items())
        text += ":" + hashlib.sha256(json.dumps(canonical).encode("utf-8")).hexdigest()
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


#: How a sealed options string starts (:func:`seal`).
SEALED = "sealed:"


def seal(options: dict[str, str]) -> str:
    """The options of :func:`check_choice` in a form not readable at a glance.

    Base64 of their JSON after :data:`SEALED`; :func:`check_choice` accepts the result in
    place of the dict. The student edition seals every self-check's options, so the feedback
    of a wrong option ("no: ...") does not show which option is right before one is chosen.

    Raises:
        ValueError: ``options`` is not a dict of strings.

    Examples:
        >>> sealed = seal({"a": "no: ...", "b": "yes: one MAC per weight."})
        >>> sealed.startswith(SEALED), "MAC" in sealed
        (True, False)
        >>> check_choice("b", sealed, key=answer_key("b", sealed))
        Correct: yes: one MAC per weight.
    """
    if not isinstance(options, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in options.items()):
        raise ValueError(f"seal takes the options dict of check_choice (letter -> feedback "
                         f"line, all strings), got {type(options).__name__}.")
    text = json.dumps(options, ensure_ascii=False, sort_keys=True)
    return SEALED + base64.b64encode(text.encode("utf-8")).decode("ascii")


def _unseal(options):
    """``options`` as a dict: a :func:`seal`-ed string is decoded, anything else returned."""
    if isinstance(options, str) and options.startswith(SEALED):
        try:
            return json.loads(base64.b64decode(options[len(SEALED):], validate=True))
        except ValueError as exc:
            raise ValueError("the sealed options are damaged: regenerate the student "
                             "edition (make classroom) or use the teacher notebook's "
                             "cell.") from exc
    return options


def _blank(answer) -> bool:
    """Print :data:`BLANK` and return True when the learner has not answered yet."""
    if answer is None:
        print(BLANK)
        return True
    return False


class CheckFailed(AssertionError):
    """A self-check answer was wrong; the message carries a hint."""


class ClaimFailed(AssertionError):
    """A sentence of a lesson is not supported by the numbers of this run."""


#: The line :func:`claim` prints when a claim holds (``benchmarks.notebooks`` counts them).
CLAIM_PREFIX = "Checked on this run:"


def claim(condition, text: str, **measured) -> None:
    """Assert that this run's numbers support the sentence ``text`` of a lesson.

    Args:
        condition: the claim as a boolean computed from this run's variables.
        text: the sentence (or its gist) as the lesson states it.
        **measured: the values the condition was computed from; shown either way.

    Raises:
        ClaimFailed: ``condition`` is false; the message quotes ``text`` and the values,
            so the lesson's prose can be corrected (or the result investigated).

    Examples:
        >>> claim(0.3 < 1.5, "per-channel loses less", pc_drop=0.3, pt_drop=1.5)
        Checked on this run: per-channel loses less (pc_drop=0.3, pt_drop=1.5)
        >>> claim(-2.0 > -1.0, "QAT wins", qat=-2.0, ptq=-1.0)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        pruning_kit.checks.ClaimFailed: The text says "QAT wins", but ... qat=-2, ptq=-1. ...
    """
    values = ", ".join(f"{k}={_short(v)}" for k, v in measured.items())
    if not bool(condition):
        raise ClaimFailed(f'The text says "{text}", but this run measured '
                          f"{values or '(no values given)'}. Rewrite the sentence or "
                          "investigate the result.")
    print(f"{CLAIM_PREFIX} {text}" + (f" ({values})" if values else ""))


def _short(value) -> str:
    """A measured value, rounded to 4 significant digits when it is a float."""
    try:
        return f"{float(value):.4g}" if not isinstance(value, (bool, int, str)) else repr(value)
    except (TypeError, ValueError):
        return repr(value)


def _mlp_counts(in_features: int, hidden: Sequence[int], num_classes: int) -> tuple[int, int]:
    """``(weights, biases)`` of a ReLU MLP with these widths."""
    sizes = [in_features, *hidden, num_classes]
    return sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True)), sum(sizes[1:])


def _number(answer, what: str) -> float:
    try:
        return float(answer)
    except (TypeError, ValueError):
        raise CheckFailed(f"Answer with a number for {what}, got {answer!r}.") from None


def check_param_count(answer, in_features: int = 784, hidden: Sequence[int] = (300, 100),
                      num_classes: int = 10) -> None:
    """Parameters of a ReLU MLP with the given widths (weights and biases)."""
    if _blank(answer):
        return
    weights, biases = _mlp_counts(in_features, hidden, num_classes)
    got, total = _number(answer, "the parameter count"), weights + biases
    if got == weights:
        raise CheckFailed("Close: that is the weights only. Each output unit also has a bias.")
    if got != total:
        raise CheckFailed("Not quite. A dense layer from a to b units has a*b weights and b "
                          "biases; add that up over the layers.")
    print(f"Correct: {total:,} parameters (weights plus one bias per output unit).")


def check_macs(answer, in_features: int = 784, hidden: Sequence[int] = (300, 100),
               num_classes: int = 10) -> None:
    """Multiply-accumulates per example of the MLP's dense layers."""
    if _blank(answer):
        return
    macs, _ = _mlp_counts(in_features, hidden, num_classes)      # one MAC per weight
    got = _number(answer, "the MAC count")
    if got == 2 * macs:
        raise CheckFailed("That is FLOPs (a multiply and an add each). One MAC is one "
                          "multiply-accumulate, so halve it.")
    if got != macs:
        raise CheckFailed("Not quite. Each of the b outputs of an a->b layer needs a "
                          "multiply-accumulates; biases and ReLUs are not counted.")
    print(f"Correct: {macs:,} MACs per example, one per weight.")


def check_bytes(answer, num_params: int, bits: int) -> None:
    """Bytes needed to store ``num_params`` values at ``bits`` bits each, packed.

    Packed values share bytes, and a file holds whole bytes, so the answer is
    ``ceil(num_params * bits / 8)``; the exact fraction ``num_params * bits / 8`` (the same
    number when it is whole) is accepted too. Rounding down is not: the last, partly filled
    byte must still be stored.

    Examples:
        >>> check_bytes(7_503, 20_006, 3)      # 60,018 bits: 7,502 bytes and 2 bits over
        Correct: 7,503 bytes for 20,006 values at 3 bits (60,018 bits, rounded up to whole bytes).
        >>> check_bytes(133_305, 266_610, 4)
        Correct: 133,305 bytes for 266,610 values at 4 bits.
    """
    if _blank(answer):
        return
    total_bits = num_params * bits
    expected = -(-total_bits // 8)                 # ceil, in integers
    got = _number(answer, "the byte count")
    if got == total_bits and total_bits:
        raise CheckFailed("That is bits, not bytes: divide by 8.")
    if got == expected or abs(got - total_bits / 8) < 1e-9:
        whole = "" if total_bits % 8 == 0 else (f" ({total_bits:,} bits, rounded up to whole "
                                                "bytes)")
        print(f"Correct: {expected:,} bytes for {num_params:,} values at {bits} bits{whole}.")
        return
    if got == total_bits // 8:
        raise CheckFailed(f"Almost: {total_bits:,} bits do not fill whole bytes, and the last, "
                          "partly filled byte is stored too. Round up.")
    raise CheckFailed(f"Not quite. Each value takes {bits} bits and a byte has 8 bits.")


def check_choice(answer, options: dict[str, str], key: str | None = None,
                 correct: str | None = None) -> None:
    """A multiple-choice question: ``options`` maps each letter to its explanation.

    Args:
        answer: the learner's letter (case and surrounding spaces are ignored), or ``None``
            when not answered yet (prints :data:`BLANK`).
        options: each option's letter mapped to the line shown when it is chosen, or
            those options :func:`seal`-ed.
        key: :func:`answer_key` of the right letter, salted with ``options``
            (``answer_key(letter, options)``), so the cell does not show the answer; an
            unsalted ``answer_key(letter)`` is accepted too.
        correct: the right letter in clear; kept for old cells, use ``key`` instead.

    Raises:
        CheckFailed: the answer is not an option, or not the right one (the message is the
            chosen option's explanation).
        ValueError: neither or both of ``key`` and ``correct`` given, or ``key`` matches
            none of the options.

    Examples:
        >>> opts = {"a": "no: ...", "b": "yes: one MAC per weight."}
        >>> check_choice("B", opts, key=answer_key("b", opts))
        Correct: yes: one MAC per weight.
    """
    options = _unseal(options)
    if isinstance(options, str) and isinstance(key, dict):  # old order: (answer, correct, options)
        options, key, correct = key, None, options
    if (key is None) == (correct is None):
        raise ValueError("Give exactly one of key=answer_key(letter, options) or "
                         "correct=letter.")
    if key is None:
        key = answer_key(correct)
    by_letter = {str(k).strip().lower(): v for k, v in options.items()}

    def opens(letter):                  # a key salted with these options, or an unsalted one
        return key in (answer_key(letter, by_letter), answer_key(letter))

    if not any(opens(k) for k in by_letter):
        raise ValueError(f"key {key!r} matches none of the options {sorted(by_letter)}: "
                         "build it with checks.answer_key(letter, options), again after "
                         "editing any option's text.")
    if _blank(answer):
        return
    letter = str(answer).strip().lower()
    if letter not in by_letter:
        raise CheckFailed(f"Answer with one of {sorted(by_letter)}, got {answer!r}.")
    if not opens(letter):
        raise CheckFailed(f"Not this one: {by_letter[letter]}")
    print(f"Correct: {by_letter[letter]}")


def check_scale(answer, max_abs: float, bits: int) -> None:
    """Scale of a symmetric narrow-range ``bits``-bit grid for ``[-max_abs, max_abs]``."""
    if _blank(answer):
        return
    qmax = 2 ** (bits - 1) - 1
    expected = max_abs / qmax
    got = _number(answer, "the scale")
    if abs(got - max_abs / 2 ** (bits - 1)) < 1e-12:
        raise CheckFailed(f"Close: the narrow symmetric range stops at +-{qmax}, not "
                          f"{2 ** (bits - 1)} (the code -{2 ** (bits - 1)} is left unused).")
    if abs(got - 2 * max_abs / (2 ** bits - 1)) < 1e-12:
        raise CheckFailed("That is the asymmetric scale (range / (2^b - 1)). Symmetric grids "
                          "put max|x| on the largest positive code.")
    if abs(got - expected) > 1e-9 * max(1.0, expected):
        raise CheckFailed(f"Not quite. The largest magnitude should land on the largest code, "
                          f"{qmax}.")
    print(f"Correct: scale = {max_abs:g} / {qmax} = {expected:.6g}; rounding error <= "
          f"{expected / 2:.3g}.")


def check_zeros(answer, num_weights: int, sparsity: float) -> None:
    """Zeros in a layer of ``num_weights`` pruned to ``sparsity`` (``round(s * n)``)."""
    if _blank(answer):
        return
    expected = round(sparsity * num_weights)
    got = _number(answer, "the number of zeros")
    if got == num_weights - expected:
        raise CheckFailed("That is the number of weights kept. Sparsity counts the zeros.")
    if got != expected:
        raise CheckFailed("Not quite. Sparsity s of n weights means s * n of them are zero "
                          "(rounded to a whole number).")
    print(f"Correct: {expected:,} zeros and {num_weights - expected:,} weights kept.")


def check_low_rank_params(answer, in_features: int, out_features: int, rank: int) -> None:
    """Weights of a rank-``rank`` factorization ``u @ v`` of an ``(in, out)`` kernel."""
    if _blank(answer):
        return
    expected = rank * (in_features + out_features)
    got = _number(answer, "the number of weights")
    if got == in_features * out_features:
        raise CheckFailed("That is the dense kernel. The factors are (in x r) and (r x out).")
    if got == rank * rank or got == rank * in_features * out_features:
        raise CheckFailed("Not quite. Count the entries of u (in x r) and of v (r x out).")
    if got != expected:
        raise CheckFailed("Not quite. u has in * r entries and v has r * out entries.")
    print(f"Correct: {rank} x ({in_features} + {out_features}) = {expected:,} weights instead "
          f"of {in_features * out_features:,} ({in_features * out_features / expected:.1f}x "
          f"fewer).")


def check_kd_factor(answer, alpha: float, temperature: float) -> None:
    """The factor ``alpha * T^2`` multiplying the KL term of the distillation loss."""
    if _blank(answer):
        return
    expected = alpha * temperature**2
    got = _number(answer, "the factor")

    def near(value: float) -> bool:
        return abs(got - value) < 1e-9 * max(1.0, abs(value))

    if not near(expected):
        if near(alpha * temperature):
            raise CheckFailed("Close: the temperature enters squared (T^2), not once.")
        if near(temperature**2):
            raise CheckFailed("Close: T^2 is only part of it; the soft term is also weighted "
                              "by alpha.")
        if near((1 - alpha) * temperature**2):
            raise CheckFailed("alpha weighs the soft (KL) term; 1 - alpha weighs the "
                              "cross-entropy.")
        raise CheckFailed("Not quite. Read the loss: the KL term is multiplied by alpha and "
                          "by T squared.")
    print(f"Correct: {expected:g} = alpha * T^2.")
