"""One lock per key (an instance id, an image checksum), kept only while wanted."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class KeyedLocks:
    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}  # key -> (lock, holders)

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, holders = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, holders + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, holders = self._locks[key]
                if holders == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, holders - 1)
