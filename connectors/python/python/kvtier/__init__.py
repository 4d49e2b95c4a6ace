"""kvtier: a tiered, replicated KV-cache and checkpoint store.

>>> import kvtier
>>> c = kvtier.Client("unix://./kvtier-data/kvtier.sock",
...                   shm_socket="./kvtier-data/kvtier-shm.sock", namespaces=["demo"])
>>> c.put("demo", [b"k1"], [b"block bytes"])
[PutResult(ok=True, existed=False, tier="cpu")]
>>> c.get("demo", [b"k1", b"nope"])
[b'block bytes', None]

``Client(address)`` talks gRPC to a ``kvtier serve`` (``host:port`` or ``unix:///path``).
Give ``shm_socket`` (the server's ``kvtier-shm.sock``) and the namespaces you will use, and
block bytes move through the server's shared-memory arena instead (same host only).
``Client.embedded(config_toml)`` runs the block manager inside this process.
``ShmSession`` is the data plane's slot operations (alloc, commit, pin, release) and the
mapped arena, for engines that copy block bytes themselves (``kvtier.vllm_shared``).

Errors raise :class:`KvtierError` subclasses carrying the server's message. A failed object
write raises :class:`OutcomeUnknownError` when it may have landed all the same (read the
object to know; writing it again is safe); any other error means it wrote nothing.
"""

from collections.abc import Sequence

from ._native import (
    Arena,
    Client,
    InvalidArgumentError,
    KvtierError,
    Miss,
    OutcomeUnknownError,
    PermissionDeniedError,
    PutResult,
    ResourceExhaustedError,
    ShmSession,
    Slot,
    UnavailableError,
    __version__,
)


def loadable_prefix(load_us: Sequence[int], max_load_us: int | None = None) -> int:
    """How many leading blocks of a lookup's answer (its ``load_us``, from
    ``Client.lookup_pinned``) load no slower than ``max_load_us``: the prefix worth loading
    ends at the first block slower to load than to recompute. ``None``: all of them."""
    if max_load_us is None:
        return len(load_us)
    return next((i for i, us in enumerate(load_us) if us > max_load_us), len(load_us))


__all__ = [
    "Client",
    "PutResult",
    "ShmSession",
    "Arena",
    "Slot",
    "Miss",
    "KvtierError",
    "UnavailableError",
    "InvalidArgumentError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "OutcomeUnknownError",
    "__version__",
    "loadable_prefix",
]
