"""stream-unlearn: k-means that forgets exactly, on live Kafka streams."""

from .base import UnlearningModel
from .dc_kmeans import DCKMeans
from .kmeans import KMeans
from .q_kmeans import QKMeans
from .state import StateError

__all__ = ["DCKMeans", "KMeans", "QKMeans", "StateError", "UnlearningModel", "load_model"]
__version__ = "0.1.0"

MODELS: dict[str, type[UnlearningModel]] = {cls.algorithm: cls for cls in (KMeans, DCKMeans, QKMeans)}


def load_model(blob: bytes) -> UnlearningModel:
    """Restore any model from ``to_state`` bytes, whatever its algorithm."""
    from .state import loads

    algorithm = loads(blob).get("algorithm")
    if algorithm not in MODELS:
        raise StateError(f"unknown algorithm in state: {algorithm!r}")
    return MODELS[algorithm].from_state(blob)
