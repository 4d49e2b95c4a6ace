"""`kvtier._native`: the Rust half of the `kvtier` Python package (pyo3)."""

# Kept in step with connectors/python/src/*.rs by tests/test_stubs.py (mypy's stubtest, plus a
# check of the names and exception bases stubtest cannot see). Rust `Vec<T>` arguments take any
# sequence but a str, typed here as lists; `&Bound<PyList>` ones (`values`, `buffers`) take
# only a list.

from types import TracebackType
from typing import Any, Literal, Self, TypeAlias, TypedDict, TypeVar, final

import numpy
from typing_extensions import Buffer

# Anything exposing the buffer protocol, C-contiguous: bytes, bytearray, memoryview, numpy
# arrays (named too: numpy's stubs give them `__buffer__` only from Python 3.12 on). A
# writable one where the call fills it (`get_into`, `submit_batch_get`).
_ReadableBuffer: TypeAlias = Buffer | numpy.ndarray[Any, Any]
_WritableBuffer: TypeAlias = Buffer | numpy.ndarray[Any, Any]
# A block's bytes: one buffer, or a tuple (or list) of buffers, one after the other.
_Value = TypeVar("_Value", bound=_ReadableBuffer | tuple[_ReadableBuffer, ...] | list[_ReadableBuffer])
_Out = TypeVar("_Out", bound=_WritableBuffer | tuple[_WritableBuffer, ...] | list[_WritableBuffer])

# pyo3's `m.add...` calls list each name they add here, in that order.
__all__ = [
    "Client",
    "PutResult",
    "ObjectUpload",
    "ShmSession",
    "Arena",
    "Slot",
    "Miss",
    "LMCacheL2Client",
    "lmcache_engine_key",
    "lmcache_object_key",
    "lmcache_header",
    "lmcache_parse_header",
    "lmcache_header_len",
    "KvtierError",
    "UnavailableError",
    "InvalidArgumentError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "OutcomeUnknownError",
    "__version__",
]

__version__: str

class _ObjectInfo(TypedDict):
    """An object's metadata (a dict at runtime)."""

    path: str
    size: int
    generation: int
    chunk_size: int
    crc32c: int
    created_unix: int

class KvtierError(Exception):
    """A kvtier request failed; the message is the server's."""

class UnavailableError(KvtierError):
    """The kvtier server cannot be reached."""

class InvalidArgumentError(KvtierError):
    """A key, namespace, size or option was refused."""

class PermissionDeniedError(KvtierError):
    """The server refused access (shm grants, namespaces)."""

class ResourceExhaustedError(KvtierError):
    """No room: memory, disk or a session limit."""

class OutcomeUnknownError(KvtierError):
    """An object's commit failed and may have landed: read the object to know; writing it again is safe."""

@final
class PutResult:
    """The outcome of one block of a put."""

    @property
    def ok(self) -> bool:
        """True when the block is stored (now, or already before: see `existed`)."""

    @property
    def existed(self) -> bool:
        """The key was already stored: the put was a no-op."""

    @property
    def tier(self) -> str | None:
        """The fastest tier holding the block ("cpu", "ssd", ...), or None when not stored."""

    @property
    def error(self) -> str | None:
        """Why the block was not stored (the server's message), or None."""

    def __repr__(self) -> str:
        """`PutResult(ok=True, existed=..., tier=...)` or `PutResult(ok=False, error=...)`."""

@final
class Client:
    """A client of one kvtier node (remote, or embedded in this process)."""

    def __new__(
        cls,
        address: str,
        shm_socket: str | None = None,
        namespaces: list[str] = ...,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ) -> Self:
        """Connects to a `kvtier serve` at `address`, through shared memory with `shm_socket`, over TLS with `tls_*`."""

    @staticmethod
    def embedded(config: str = ...) -> Client:
        """A manager running inside this process, configured by `config` (a kvtier.toml's text; "": the defaults)."""

    @property
    def uses_shm(self) -> bool:
        """True when block bytes move through shared memory."""

    def __repr__(self) -> str:
        """`kvtier.Client(address, shm=...)`."""

    def put(
        self,
        namespace: str,
        keys: list[bytes],
        values: list[_Value],
        durability: str = "cache",
    ) -> list[PutResult]:
        """Stores blocks: `keys[i]` gets the bytes of buffer `values[i]`; one result per block, in order."""

    def get(self, namespace: str, keys: list[bytes]) -> list[bytes | None]:
        """Reads blocks; `None` for each key not found."""

    def get_into(self, namespace: str, keys: list[bytes], buffers: list[_Out]) -> list[int | None]:
        """Reads blocks into caller buffers; the bytes read per key, `None` for a miss."""

    def lookup(self, namespace: str, keys: list[bytes]) -> list[str]:
        """The tiers ("cpu", "ssd", ...) of the longest present prefix of `keys`. Reads only the index."""

    def lookup_pinned(self, namespace: str, keys: list[bytes], pin_ms: int = 0) -> tuple[list[str], list[int], bool]:
        """`lookup` with what each block would cost: `(tiers, load_us, pinned)`, pinned for `pin_ms`."""

    def delete(self, namespace: str, keys: list[bytes]) -> list[bool]:
        """Deletes blocks from every tier; whether each was present."""

    def stats(self) -> dict[str, Any]:
        """Capacity, usage and counters of the node and each tier, as a dict (`kvtier stat --json`)."""

    def health(self) -> tuple[bool, str]:
        """(serving, version) of the node."""

    def put_object(self, namespace: str, path: str, data: _ReadableBuffer, durability: str = "cache") -> _ObjectInfo:
        """Stores `data` (bytes-like) as a new version of `path`; returns its metadata."""

    def open_object(
        self, namespace: str, path: str, durability: str = "cache", size: int | None = None
    ) -> ObjectUpload:
        """Starts a new version of `path`, written piece by piece with `write` and made visible by `commit`."""

    def read_object(
        self,
        namespace: str,
        path: str,
        offset: int = 0,
        length: int | None = None,
        generation: int | None = None,
    ) -> bytes | None:
        """`length` bytes of `path` from `offset` (to the end by default), or None if there is no such object."""

    def stat_object(self, namespace: str, path: str) -> _ObjectInfo | None:
        """Metadata of the current version of `path`, or None."""

    def list_objects(self, namespace: str, prefix: str = "") -> list[_ObjectInfo]:
        """Metadata of the objects of `namespace` whose path starts with `prefix`, by path."""

    def delete_object(self, namespace: str, path: str) -> bool:
        """Removes `path`; whether it existed."""

@final
class ObjectUpload:
    """A streamed upload of one object version (`Client.open_object`)."""

    def write(self, data: _ReadableBuffer) -> None:
        """Appends bytes (any bytes-like object)."""

    def commit(self) -> _ObjectInfo:
        """Stores what is left and makes this version the object's current one; its metadata."""

    def abort(self) -> None:
        """Gives up: nothing written is kept and the object stays as it was. Idempotent."""

    @property
    def path(self) -> str:
        """The object's path."""

    def __enter__(self) -> Self:
        """The upload itself."""

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        _exc: BaseException | None = None,
        _tb: TracebackType | None = None,
    ) -> Literal[False]:
        """Commits on a clean exit (if still open), aborts on an exception; never suppresses it."""

    def __repr__(self) -> str:
        """`ObjectUpload(path, open|closed)`."""

@final
class Arena:
    """The server's arena as this process mapped it: a writable buffer (memoryview, numpy, torch)."""

    @property
    def id(self) -> int:
        """Which arena this is: equal ids mean the same memory (a restarted server has a new one)."""

    @property
    def private(self) -> bool:
        """True for a window of this session's own instead of the server's arena."""

    def __len__(self) -> int:
        """The arena's size in bytes."""

    def __repr__(self) -> str:
        """`kvtier.Arena(id=..., N bytes)`."""

    # Python shows the buffer protocol as `__buffer__` from 3.12 on; type checkers look for it
    # on every version (PEP 688), as typeshed declares it for bytes.
    def __buffer__(self, flags: int, /) -> memoryview:
        """The arena's bytes, writable."""

@final
class Slot:
    """A slot of the arena this session holds: an allocation to fill then commit, or a pinned block."""

    @property
    def handle(self) -> int:
        """The session's handle (for commit and release)."""

    @property
    def offset(self) -> int:
        """Byte offset of the block in the arena."""

    @property
    def length(self) -> int:
        """Bytes of the block."""

    @property
    def tier(self) -> str | None:
        """For a pin, the tier the block was found in ("cpu", "ssd"); None for an allocation."""

    def __repr__(self) -> str:
        """`Slot(handle=..., offset=..., length=..., tier=...)`."""

@final
class Miss:
    """Why a key was not pinned."""

    @property
    def reason(self) -> str:
        """One of "not_found", "corrupt", "error", "no_room" (read it over gRPC), "again" (release pins first)."""

    @property
    def message(self) -> str:
        """The server's message."""

    def __repr__(self) -> str:
        """`Miss(reason, message)`."""

@final
class ShmSession:
    """A session of a local kvtier server's shared-memory data plane; one request at a time."""

    def __new__(cls, shm_socket: str, namespaces: list[str]) -> Self:
        """Connects to the server's shm socket (`kvtier-shm.sock`) and opens `namespaces`."""

    @property
    def arena(self) -> Arena:
        """The mapped arena (a writable buffer)."""

    @property
    def session_limit(self) -> int:
        """Most bytes this session may hold in slots at once."""

    def alloc(
        self,
        namespace: str,
        keys: list[bytes],
        lengths: list[int],
        durability: str = "cache",
        wait_ms: int | None = None,
    ) -> list[Slot | PutResult]:
        """A slot for each block to write then commit, or, for a block that gets none, its final `PutResult`."""

    def commit(self, handles: list[int]) -> list[PutResult]:
        """Publishes allocated slots whose bytes are written; a `PutResult` per handle, in order."""

    def lookup(self, namespace: str, keys: list[bytes]) -> tuple[list[str], list[int]]:
        """`(tiers, load_us)` of the longest present prefix of `keys`, pinning nothing."""

    def pin(self, namespace: str, keys: list[bytes]) -> list[Slot | Miss]:
        """Pins `keys` in the arena: a `Slot` to read until released, or a `Miss` saying why not."""

    def release(self, handles: list[int]) -> int:
        """Releases pins and abandons uncommitted allocations; how many handles were held."""

    def close(self) -> None:
        """Closes the session: the server releases everything it still holds."""

    def __repr__(self) -> str:
        """`kvtier.ShmSession(arena id ..., N bytes)`."""

@final
class LMCacheL2Client:
    """The native L2 client of LMCache's multiprocess mode (`native_plugin` adapter)."""

    def __new__(
        cls,
        address: str,
        shm_socket: str | None = None,
        namespace_prefix: str = ...,
        durability: str = "cache",
        max_load_us: int | None = None,
        pin_ms: int = 10000,
    ) -> Self:
        """A client of the kvtier server at `address`, keys under `namespace_prefix` ("lmcache"); connects lazily."""

    def event_fd(self) -> int:
        """The eventfd signalled when completions are ready."""

    def submit_batch_get(self, keys: list[str], buffers: list[_Out]) -> int:
        """Reads `keys` into `buffers` (one writable buffer per key); the future id."""

    def submit_batch_set(self, keys: list[str], buffers: list[_Value]) -> int:
        """Stores `buffers[i]` under `keys[i]`; the future id."""

    def submit_batch_exists(self, keys: list[str]) -> int:
        """Which keys are stored (prefix semantics, per namespace); the future id."""

    def submit_batch_delete(self, keys: list[str]) -> int:
        """Deletes `keys` (L2 eviction); the future id."""

    def drain_completions(self) -> list[tuple[int, bool, str, list[bool] | None]]:
        """Completions since the last call: `(future_id, ok, error, per-key results)`."""

    def close(self) -> None:
        """Refuses new submits and waits for those running."""

    def __repr__(self) -> str:
        """`kvtier.LMCacheL2Client(address, shm=...)`."""

def lmcache_engine_key(prefix: str, key: str) -> tuple[str, bytes]:
    """`(namespace, key bytes)` of a `CacheEngineKey` string under `prefix`."""

def lmcache_object_key(prefix: str, key: str) -> tuple[str, bytes]:
    """`(namespace, key bytes)` of a multiprocess-mode object key string under `prefix`."""

def lmcache_header(fmt: int, groups: list[tuple[int, list[int]]], length: int) -> bytes:
    """The header kvtier stores before an LMCache chunk: `fmt`, `(dtype code, shape)` groups, payload `length`."""

def lmcache_parse_header(data: bytes) -> tuple[int, list[tuple[int, list[int]]], int]:
    """`(fmt, [(dtype code, [4 dims])...], payload length)` of a header; `InvalidArgumentError` if not one."""

def lmcache_header_len(groups: int) -> int:
    """Bytes of a header describing `groups` groups."""
