"""Load the numpy-only pickles some navigation datasets ship (GNM's ``traj_data.pkl``) safely.

A pickle can name any importable callable and the standard unpickler will call it, so loading an
untrusted ``.pkl`` can run arbitrary code. Datasets only need numpy arrays inside plain dicts,
lists and tuples, so :class:`RestrictedUnpickler` admits exactly the few globals numpy's array and
scalar pickling uses and refuses everything else *before* anything is called.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

#: (module, name) pairs a numpy array / scalar / dtype pickle refers to (numpy 1.x and 2.x paths).
ALLOWED_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),  # protocol-5 array pickles
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # bytes inside protocol-2 pickles (Python 2 era datasets)
    }
)


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle refers to something other than numpy arrays and plain containers."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose ``find_class`` only resolves :data:`ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"refusing to load global {module}.{name}: only numpy arrays, numpy scalars and plain "
            "containers (dict, list, tuple, str, numbers) are allowed in data pickles"
        )


def restricted_loads(data: bytes) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`; any other unpickling failure is an UnpicklingError too."""
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise pickle.UnpicklingError(f"not a readable data pickle: {exc}") from exc


def restricted_load(path: str | Path) -> Any:
    """Read and unpickle a file with :func:`restricted_loads`."""
    return restricted_loads(Path(path).read_bytes())
