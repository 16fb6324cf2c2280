"""pruning_kit: a course and toolkit for compressing neural networks with JAX, Flax NNX and Optax.

Modules, bottom layer first: ``data`` and ``models``; ``train`` and ``measure``; the
techniques; and the notebook-facing ``plots`` and ``checks``.
"""

__version__ = "0.1.0"
