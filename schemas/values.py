"""Python values <-> the Avro ``value`` / ``kwargs`` unions, losslessly.

Each Python value takes exactly one branch (chosen here with fastavro's tuple
notation, so fastavro never guesses): ``None``, ``bool``, 64-bit ``int``,
``float`` (NaN and +-inf included), ``str``, a dict of those (``ScalarMap``), a
numpy array (``NDArray``: dtype, shape, bytes) or any other JSON value
(``JsonValue``). Anything else raises :class:`EncodeError` naming the tag.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from flarestream.errors import DecodeError, EncodeError

NAMESPACE = "flarestream.analytics"
SCALAR_MAP = f"{NAMESPACE}.ScalarMap"
NDARRAY = f"{NAMESPACE}.NDArray"
JSON_VALUE = f"{NAMESPACE}.JsonValue"

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_SCALAR_TYPES = (type(None), bool, int, float, str)


def _scalar_branch(value: Any) -> tuple[str, Any] | None:
    """Tuple notation for a plain scalar, or None when it is not one."""
    cls = type(value)
    if cls is float:
        return ("double", value)
    if cls is str:
        return ("string", value)
    if cls is int:
        return ("long", value) if _INT64_MIN <= value <= _INT64_MAX else None
    if cls is bool:
        return ("boolean", value)
    if value is None:
        return ("null", None)
    if getattr(value, "shape", None) == () and hasattr(value, "item"):  # numpy scalars
        item = value.item()
        return None if type(item) is type(value) else _scalar_branch(item)
    return None


def _is_ndarray(value: Any) -> bool:
    np = sys.modules.get("numpy")  # no numpy imported: value cannot be an array
    return np is not None and isinstance(value, np.ndarray)


def _check_json(tag: str, value: Any, where: str) -> None:
    """Refuse what JSON would not give back unchanged (tuples, sets, objects, non-str keys)."""
    if isinstance(value, _SCALAR_TYPES):
        return
    if type(value) is list:
        for item in value:
            _check_json(tag, item, where)
        return
    if type(value) is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise EncodeError(
                    f"'{tag}': {where} has a dict key {key!r} of type {type(key).__name__}; "
                    "only str keys are kept exactly"
                )
            _check_json(tag, item, where)
        return
    raise EncodeError(
        f"'{tag}': {where} holds a {type(value).__name__}, which cannot be encoded losslessly; "
        "use numbers, strings, lists, dicts with str keys or numpy arrays"
    )


def _json_branch(tag: str, value: Any, where: str) -> tuple[str, dict[str, str]]:
    _check_json(tag, value, where)
    return (JSON_VALUE, {"json": json.dumps(value, allow_nan=True, separators=(",", ":"))})


def _ndarray_branch(tag: str, value: Any) -> tuple[str, dict[str, Any]]:
    if value.dtype.hasobject:
        raise EncodeError(f"'{tag}': numpy arrays of dtype object cannot be encoded losslessly")
    if value.dtype.fields is not None:  # dtype.str of a structured dtype drops its fields
        raise EncodeError(
            f"'{tag}': numpy arrays of structured dtype {value.dtype} cannot be encoded "
            "losslessly; send each field as its own array"
        )
    return (
        NDARRAY,
        {"dtype": value.dtype.str, "shape": list(value.shape), "data": value.tobytes(order="C")},
    )


def to_avro_value(tag: str, value: Any) -> tuple[str, Any]:
    """The union branch and datum for a record's value."""
    if _is_ndarray(value):  # before scalars: a 0-d array must come back as an array
        return _ndarray_branch(tag, value)
    branch = _scalar_branch(value)
    if branch is not None:
        return branch
    if type(value) is dict:
        entries = {}
        for key, item in value.items():
            item_branch = _scalar_branch(item) if type(key) is str else None
            if item_branch is None:
                return _json_branch(tag, value, "the value")
            entries[key] = item_branch
        return (SCALAR_MAP, {"entries": entries})
    if hasattr(value, "dtype") and hasattr(value, "tobytes") and hasattr(value, "shape"):
        return _ndarray_branch(tag, value)
    return _json_branch(tag, value, "the value")


def to_avro_kwargs(tag: str, kwargs: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    out = {}
    for key, item in kwargs.items():
        branch = _scalar_branch(item)
        out[key] = branch if branch is not None else _json_branch(tag, item, f"kwarg '{key}'")
    return out


def from_avro_value(datum: Any) -> Any:
    """The Python value for a decoded union datum (records arrive as dicts)."""
    if type(datum) is not dict:
        return datum
    if "entries" in datum:
        return datum["entries"]
    if "json" in datum:
        return _loads(datum["json"])
    if "dtype" in datum:
        return _to_ndarray(datum)
    raise DecodeError(f"unexpected value record with fields {sorted(datum)}")


def from_avro_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: (_loads(v["json"]) if type(v) is dict else v) for k, v in kwargs.items()}


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise DecodeError(f"corrupt JSON value in record: {exc}") from exc


def _to_ndarray(datum: dict[str, Any]) -> Any:
    try:
        import numpy as np
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DecodeError(
            "this record holds an array; install numpy (pip install 'flarestream[numpy]')"
        ) from exc
    try:
        dtype = np.dtype(datum["dtype"])
        if dtype.hasobject:
            raise TypeError("object dtype")
        return np.frombuffer(datum["data"], dtype=dtype).reshape(datum["shape"]).copy()
    except (TypeError, ValueError) as exc:
        raise DecodeError(f"corrupt array in record: {exc}") from exc
