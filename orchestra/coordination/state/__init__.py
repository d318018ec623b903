"""Durable sessions: an append-only log per session, storage backends, the state manager."""

from .backends import FileStorageBackend, SQLiteStorageBackend, StorageBackend
from .manager import SessionLog, StateManager

__all__ = [
    "FileStorageBackend",
    "SQLiteStorageBackend",
    "SessionLog",
    "StateManager",
    "StorageBackend",
]
