"""Durable sessions: an append-only log per session, storage backends, the state manager."""

from .backends import FileStorageBackend, SQLiteStorageBackend, StorageBackend
from .manager import SessionLog, StateManager
from .servers import PostgresStorageBackend, RedisStorageBackend

__all__ = [
    "FileStorageBackend",
    "PostgresStorageBackend",
    "RedisStorageBackend",
    "SQLiteStorageBackend",
    "SessionLog",
    "StateManager",
    "StorageBackend",
]
