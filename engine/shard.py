"""Sharding: which photos of a job one process takes, so that N processes split one job.

Every machine must agree on the split without talking to the others, so the rule is a pure
function of the photo's *stable key*: its SKU when it has one, else its path exactly as
discovery gives it (``str(candidate.path)``, so every shard must see the inputs under the same
paths). The key's bytes (UTF-8; undecodable file-name bytes kept as they are on disk via
``surrogateescape``) are hashed with SHA-256; the first 8 bytes of the digest, read as a
big-endian unsigned integer, modulo N, name the shard. Python's ``hash()`` is salted per process
and would split differently on every machine.

A shard keeps its own files in the shared output directory: its name suffix
(``-shard-I-of-N``) goes before the extension of each per-shard file (``state.sqlite`` ->
``state-shard-0-of-2.sqlite``). N = 1 is the unsharded layout, with today's names.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from engine.errors import ConfigError

_SPEC = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


@dataclass(frozen=True, order=True)
class Shard:
    """Shard ``index`` of ``count`` (0 <= index < count).

    Raises:
        ConfigError: the index or the count is out of range.
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ConfigError(
                f"shard {self.index}/{self.count} is out of range (needs 0 <= I < N, e.g. 0/2)"
            )

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"I/N"`` as given to ``--shard``.

        Raises:
            ConfigError: not of the form ``I/N``, or out of range.
        """
        match = _SPEC.fullmatch(text)
        if match is None:
            raise ConfigError(f"{text!r} is not I/N (e.g. 0/2 for shard 0 of 2)")
        return cls(int(match[1]), int(match[2]))

    @property
    def sharded(self) -> bool:
        return self.count > 1

    @property
    def suffix(self) -> str:
        """What a per-shard file name carries before its extension; empty when unsharded."""
        return f"-shard-{self.index}-of-{self.count}" if self.sharded else ""

    def file_name(self, base: str) -> str:
        """This shard's version of a per-shard file: ``state.sqlite`` ->
        ``state-shard-0-of-2.sqlite``, ``.lock`` -> ``.lock-shard-0-of-2``, ``_SUCCESS`` ->
        ``_SUCCESS-shard-0-of-2``; ``base`` itself when unsharded."""
        name = PurePosixPath(base)
        return f"{name.stem}{self.suffix}{name.suffix}"

    @classmethod
    def of_file(cls, name: str, base: str) -> Shard | None:
        """The shard whose :meth:`file_name` of ``base`` is ``name``; ``None`` when it is none's."""
        if name == base:
            return UNSHARDED
        stem, ext = PurePosixPath(base).stem, PurePosixPath(base).suffix
        match = re.fullmatch(rf"{re.escape(stem)}-shard-(\d+)-of-(\d+){re.escape(ext)}", name)
        if match is None:
            return None
        try:
            shard = cls(int(match[1]), int(match[2]))
        except ConfigError:
            return None
        return shard if shard.sharded else None

    def owns(self, key: str) -> bool:
        """Whether this shard takes the photo whose stable key (see :func:`photo_key`) is
        ``key``. Of the N shards of one count, exactly one owns any key."""
        return not self.sharded or shard_index(key, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


UNSHARDED = Shard(0, 1)


def photo_key(path: str, sku: str | None = None) -> str:
    """The stable key a photo is sharded by: its SKU when it has one, else its path."""
    return sku if sku else path


def shard_index(key: str, count: int) -> int:
    """The shard (0 .. count - 1) that owns ``key``: SHA-256 of its bytes, first 8 bytes
    big-endian, modulo ``count``. The same on every machine and Python version."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % count
