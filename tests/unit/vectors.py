"""Shared test helpers: NVFlare 2.9.0's analytics vectors and exact comparison.

The vector file holds what NVFlare itself produced. Its JSON marks values JSON
cannot carry: ``{"__enum__": ...}``, ``{"__npscalar__": ..., "dtype": ...}``,
``{"__float__": "nan"}`` and ``{"__ndarray__": [...], "dtype": ...}``;
:func:`decode_special` turns them back into Python and numpy values.

:func:`same` is the equality the codec promises: types kept (an int stays an int,
a bool stays a bool), NaN equal to NaN, -0.0 distinct from 0.0, numpy arrays
equal when dtype (byte order included), shape and bytes are.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from flarestream.schemas import AnalyticsDataType, LogWriterName

VECTORS_NAME = "analytics-vectors-2.9.0.json"
ENV_VAR = "FLARESTREAM_NVFLARE_VECTORS"
REPO = Path(__file__).resolve().parents[2]
DATA_COPY = REPO / "tests" / "data" / VECTORS_NAME
SHARED_COPY = REPO.parent / "shared" / "nvflare" / VECTORS_NAME

_ENUMS: dict[str, Any] = {"AnalyticsDataType": AnalyticsDataType, "LogWriterName": LogWriterName}
_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def vectors_path() -> Path:
    """``$FLARESTREAM_NVFLARE_VECTORS`` if set, else the copy in tests/data, else
    ``<repo>/../shared/nvflare`` (where CI puts the shared folder)."""
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        return Path(explicit)
    for candidate in (DATA_COPY, SHARED_COPY):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"NVFlare vectors not found: set {ENV_VAR} or restore {DATA_COPY} (tried {SHARED_COPY})"
    )


@cache
def load_vectors() -> dict[str, Any]:
    """The raw vector file (special encodings not decoded)."""
    data: dict[str, Any] = json.loads(vectors_path().read_text("utf-8"))
    return data


def cases() -> list[dict[str, Any]]:
    return list(load_vectors()["cases"])


def valid_cases() -> list[dict[str, Any]]:
    return [case for case in cases() if "dxo" in case]


def invalid_cases() -> list[dict[str, Any]]:
    return [case for case in cases() if "error" in case]


def decode_special(obj: Any) -> Any:
    """The Python/numpy value a vector's JSON stands for."""
    if isinstance(obj, list):
        return [decode_special(item) for item in obj]
    if not isinstance(obj, dict):
        return obj
    if "__enum__" in obj:
        if obj["__enum__"] == "DataKind":  # flarestream's DXO dict holds the kind's name
            return obj["name"]
        return _ENUMS[obj["__enum__"]][obj["name"]]
    if "__npscalar__" in obj:
        return np.dtype(obj["dtype"]).type(obj["__npscalar__"])
    if "__float__" in obj:
        return _FLOATS[obj["__float__"]]
    if "__ndarray__" in obj:
        return np.array(obj["__ndarray__"], dtype=obj["dtype"])
    return {key: decode_special(item) for key, item in obj.items()}


def same(a: Any, b: Any) -> bool:
    """Exact equality as the wire promises it (see the module docstring)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            type(a) is type(b)
            and a.dtype.str == b.dtype.str
            and a.shape == b.shape
            and a.tobytes() == b.tobytes()
        )
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if dataclasses.is_dataclass(a):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    return bool(a == b)


def assert_same(actual: Any, expected: Any) -> None:
    assert same(actual, expected), f"\nactual:   {actual!r}\nexpected: {expected!r}"
