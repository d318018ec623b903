"""Durable sessions: an append-only log per session, storage backends, the state manager."""

from .backends import StorageBackend
from .files import FileStorageBackend
from .manager import SessionLog, StateManager
from .postgres import PostgresStorageBackend
from .redis import RedisStorageBackend
from .sqlite import SQLiteStorageBackend
from .values import register_type

__all__ = [
    "FileStorageBackend",
    "PostgresStorageBackend",
    "RedisStorageBackend",
    "SQLiteStorageBackend",
    "SessionLog",
    "StateManager",
    "StorageBackend",
    "register_type",
]
