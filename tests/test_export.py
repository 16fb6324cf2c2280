"""StableHLO export: a compressed model leaves the course as a file plain JAX runs."""

import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pruning_kit import export, structure, user_models, w8a8

X = np.random.default_rng(0).random((6, 8, 8, 1), dtype=np.float32)


def test_shrunk_user_model_reloads_in_a_process_without_pruning_kit(tmp_path):
    model = user_models.BUILDERS["resnet"](nnx.Rngs(0))
    small = structure.remove_channels(model, {"stem": np.arange(4)}, example=X[:2])
    path = export.to_stablehlo(small, X[:2], tmp_path / "resnet.stablehlo")
    np.save(tmp_path / "x.npy", X)
    script = textwrap.dedent(f"""
        import sys
        import jax, numpy as np
        exported = jax.export.deserialize(bytearray(open({str(path)!r}, "rb").read()))
        np.save({str(tmp_path / "out.npy")!r}, np.asarray(exported.call(np.load(
            {str(tmp_path / "x.npy")!r}))))
        assert not any(m.startswith(("pruning_kit", "flax")) for m in sys.modules)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    fresh = np.load(tmp_path / "out.npy")
    here = np.asarray(export.load_stablehlo(path)(X))
    np.testing.assert_array_equal(fresh, here)              # the same program, bit for bit
    np.testing.assert_allclose(fresh, np.asarray(small(X)), atol=1e-5)
    info = export.describe(path)
    assert info["platforms"] == ["cpu"] and "stablehlo.convolution" in info["ops"]


def test_integer_model_exports_with_its_int8_ops(tmp_path):
    model = user_models.BUILDERS["vgg"](nnx.Rngs(0))
    q = w8a8.quantize_model(model, X)
    path = export.to_stablehlo(q, X[:2], tmp_path / "vgg_int8.stablehlo")
    np.testing.assert_array_equal(np.asarray(export.load_stablehlo(path)(X)), np.asarray(q(X)))
    import jax

    mlir = jax.export.deserialize(bytearray(path.read_bytes())).mlir_module()
    assert "xi8>" in mlir and "xi32>" in mlir      # int8 codes, int32 accumulation


def test_bad_input(tmp_path):
    model = user_models.BUILDERS["vgg"](nnx.Rngs(0))
    with pytest.raises(ValueError, match="non-empty batch"):
        export.to_stablehlo(model, X[:0], tmp_path / "x.stablehlo")
    assert not (tmp_path / "x.stablehlo").exists()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export.to_stablehlo(model, X[:2], tmp_path / "nonexistent" / "x.stablehlo")
    with pytest.raises(FileNotFoundError, match="No StableHLO file"):
        export.load_stablehlo("/nonexistent/x.stablehlo")


def test_a_model_that_counts_its_calls_exports_and_is_left_as_it_was(tmp_path):
    class Calls(nnx.Variable):
        pass

    class Counting(nnx.Module):          # writes one of its own Variables in __call__
        def __init__(self, rngs):
            self.fc = nnx.Linear(64, 10, rngs=rngs)
            self.calls = Calls(jnp.zeros((), jnp.int32))

        def __call__(self, x):
            self.calls[...] = self.calls[...] + 1
            return self.fc(x.reshape(x.shape[0], -1))

    model = Counting(nnx.Rngs(0))
    path = export.to_stablehlo(model, X[:2], tmp_path / "counting.stablehlo")
    assert int(model.calls[...]) == 0                  # exporting did not call the model
    np.testing.assert_allclose(np.asarray(export.load_stablehlo(path)(X)),
                               np.asarray(model.fc(X.reshape(len(X), -1))), atol=1e-5)
