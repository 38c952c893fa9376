"""numpy weights (``fedolf``'s ``{key: ndarray}``) as Flower ArrayRecords and back."""

from typing import Dict

import numpy as np
from flwr.app import Array, ArrayRecord


def to_record(weights: Dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({key: Array(value) for key, value in weights.items()})


def from_record(record: ArrayRecord) -> Dict[str, np.ndarray]:
    return {key: array.numpy() for key, array in record.items()}
