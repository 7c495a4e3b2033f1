"""TensorFlow `DataType` enum values, their names and their numpy equivalents (no TensorFlow import)."""

from __future__ import annotations

import numpy as np

DT_INVALID = 0
DT_FLOAT = 1
DT_DOUBLE = 2
DT_INT32 = 3
DT_UINT8 = 4
DT_INT16 = 5
DT_INT8 = 6
DT_STRING = 7
DT_COMPLEX64 = 8
DT_INT64 = 9
DT_BOOL = 10
DT_BFLOAT16 = 14
DT_UINT16 = 17
DT_COMPLEX128 = 18
DT_HALF = 19
DT_UINT32 = 22
DT_UINT64 = 23

#: Short names as TensorFlow's DataTypeString prints them (used in error messages).
NAMES: dict[int, str] = {
    DT_FLOAT: "float",
    DT_DOUBLE: "double",
    DT_INT32: "int32",
    DT_UINT8: "uint8",
    DT_INT16: "int16",
    DT_INT8: "int8",
    DT_STRING: "string",
    DT_COMPLEX64: "complex64",
    DT_INT64: "int64",
    DT_BOOL: "bool",
    DT_BFLOAT16: "bfloat16",
    DT_UINT16: "uint16",
    DT_COMPLEX128: "complex128",
    DT_HALF: "half",
    DT_UINT32: "uint32",
    DT_UINT64: "uint64",
}


def _bfloat16() -> np.dtype:
    import ml_dtypes  # installed with TensorFlow; only needed for bfloat16 tensors

    return np.dtype(ml_dtypes.bfloat16)


_NUMPY: dict[int, np.dtype] = {
    DT_FLOAT: np.dtype(np.float32),
    DT_DOUBLE: np.dtype(np.float64),
    DT_INT32: np.dtype(np.int32),
    DT_UINT8: np.dtype(np.uint8),
    DT_INT16: np.dtype(np.int16),
    DT_INT8: np.dtype(np.int8),
    DT_STRING: np.dtype(object),
    DT_COMPLEX64: np.dtype(np.complex64),
    DT_INT64: np.dtype(np.int64),
    DT_BOOL: np.dtype(np.bool_),
    DT_UINT16: np.dtype(np.uint16),
    DT_COMPLEX128: np.dtype(np.complex128),
    DT_HALF: np.dtype(np.float16),
    DT_UINT32: np.dtype(np.uint32),
    DT_UINT64: np.dtype(np.uint64),
}


def name(dtype: int) -> str:
    """TensorFlow's short name of a DataType enum value (e.g. 'float'), or 'DT_<n>' for unknown ones."""
    return NAMES.get(dtype, f"DT_{dtype}")


def is_supported(dtype: int) -> bool:
    return dtype in _NUMPY or dtype == DT_BFLOAT16


def to_numpy(dtype: int) -> np.dtype:
    """The numpy dtype holding a tensor of `dtype` (object for DT_STRING). KeyError if unsupported."""
    if dtype == DT_BFLOAT16:
        return _bfloat16()
    return _NUMPY[dtype]


_FROM_NUMPY: dict[np.dtype, int] = {np_dtype: enum for enum, np_dtype in _NUMPY.items()}


def from_numpy(dtype: np.dtype) -> int:
    """The DataType enum value of a numpy dtype (bytes/str/object arrays are DT_STRING)."""
    found = _FROM_NUMPY.get(dtype)
    if found is not None:
        return found
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return DT_STRING
    found = _FROM_NUMPY.get(dtype.newbyteorder("=")) if dtype.byteorder not in "=|" else _FROM_NUMPY.get(dtype)
    if found is not None:
        return found
    if dtype.name == "bfloat16":
        return DT_BFLOAT16
    raise KeyError(f"no TensorFlow DataType for numpy dtype {dtype}")
