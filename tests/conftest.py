"""Shared fixtures: small real data (sklearn digits) and one trained model, so tests stay fast.

Session-scoped fixtures are built once per test run and shared by every test file that asks
for them. They must not be mutated: a test that trains, prunes, quantizes or otherwise changes
a shared model works on its own copy, ``model = nnx.clone(trained_mlp)``.
"""

import pytest
from flax import nnx

from pruning_kit import data, models, train


@pytest.fixture(scope="session")
def digits():
    """``data.load_digits()``: 1,005 train / 252 validation / 540 test images of 8x8x1.

    Read-only by convention: copy an array before changing it.
    """
    return data.load_digits()


@pytest.fixture(scope="session")
def trained_mlp(digits):
    """A digits MLP ``64 -> 32 -> 10`` trained once per session (test accuracy 0.91).

    ``models.MLP(64, (32,), rngs=nnx.Rngs(0))`` fitted on ``digits.x_train`` for 8 epochs,
    batch 32, learning rate 3e-3, shuffle seed 0. Shared by every test that asks for
    it: call ``nnx.clone(trained_mlp)`` before anything that changes the model (``train.fit``,
    ``nnx.update``, pruning, ``.train()``/``.eval()``), and use it as is only to read it.
    """
    model = models.MLP(64, (32,), rngs=nnx.Rngs(0))
    train.fit(model, digits.x_train, digits.y_train, epochs=8, batch_size=32,
              learning_rate=3e-3, progress=False)
    return model
