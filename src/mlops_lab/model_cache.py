"""What is made from the published model (the loaded model, its schema), made again only when the model changes.

The API's model store and the console's live-model view hold one :class:`ModelCache` each. The caller asks the model's
source for its cheap fingerprint (the S3 object's ``ETag`` from a ``HEAD``, a file's stat, a registry version) as
often as it likes; the costly load (download, parse, warm up) runs only when that fingerprint differs from the one the
cached value was made from.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class ModelCache(Generic[T]):
    """One value and the fingerprint it was made from. Thread-safe: concurrent callers with a new fingerprint wait for
    one load rather than loading it each. A load that raises leaves the cached value as it was."""

    def __init__(self) -> None:
        self._fingerprint: str | None = None
        self._value: T | None = None
        self._lock = threading.Lock()

    def get(self, fingerprint: str, load: Callable[[], T]) -> T:
        """The value made from the model whose fingerprint is ``fingerprint``: the cached one, or ``load()``'s."""
        with self._lock:
            if self._value is None or fingerprint != self._fingerprint:
                self._value = load()
                self._fingerprint = fingerprint
            return self._value
