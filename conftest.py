"""Test-run settings shared by every process the suite starts (pytest, its workers, kernels).

JAX's persistent compilation cache: many tests and notebooks compile the same programs (a
LeNet training step, a SmallCNN forward) in separate processes -- nbval runs each notebook
in its own kernel -- so compiled executables are kept on disk and reused within the run and
by later runs. It caches compilation only; every number is still computed. Set
``JAX_COMPILATION_CACHE_DIR`` yourself to choose the folder, or to ``""`` to switch it off.
"""

import os
import tempfile

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"pruning_kit-jax-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
