"""How descriptors are written to a store and read back: compact JSON, optionally signed.

With a signing key (``CML_JOBS_SIGNING_KEY``) every descriptor is stored as
``hmac-sha256:{mac}:{json}``, the MAC an HMAC-SHA256 of the JSON under a key that never
goes to the store: whoever can write to Redis but lacks the key cannot make a worker run
anything. A descriptor whose signature is missing or wrong reads as invalid, and the
dispatcher parks its task with that reason.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict

from cml_jobs._descriptors import (
    MAX_DESCRIPTOR_BYTES,
    TaskDescriptor,
    encode_descriptor,
    parse_descriptor,
)
from cml_jobs.exceptions import InvalidDescriptorError

__all__ = ["DescriptorCodec"]

_SIGNED = "hmac-sha256:"
# A stored descriptor may exceed the limit by its signature, not by more.
_LARGEST_STORED = MAX_DESCRIPTOR_BYTES + 1024


class DescriptorCodec:
    """Encodes descriptors for a store and decodes what a store holds.

    Decoded descriptors are kept by their stored text in a cache bounded by entries and
    by bytes, so a recurrent task is parsed once rather than on every occurrence (a
    replaced task has new text) while a worker's memory does not grow with the schedule.

    Args:
        signing_key: sign on the way in and check on the way out; None stores plain JSON.
        cache_size: the most decoded descriptors kept.
        cache_bytes: about the most memory they take (the stored text plus an estimate
            of the parsed model, ``ENTRY_OVERHEAD`` bytes each).
    """

    #: What a parsed descriptor costs beyond its stored text (measured: ~1.5 KB).
    ENTRY_OVERHEAD = 1536

    def __init__(
        self,
        signing_key: str | bytes | None = None,
        *,
        cache_size: int = 2048,
        cache_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self._key = signing_key.encode() if isinstance(signing_key, str) else signing_key
        self._cache: OrderedDict[str, TaskDescriptor] = OrderedDict()
        self._cache_size, self._cache_bytes = cache_size, cache_bytes
        self._cached_bytes = 0

    def __repr__(self) -> str:
        return f"DescriptorCodec(signed={self._key is not None})"  # never the key

    def encode(self, descriptor: TaskDescriptor) -> str:
        """The descriptor as the store keeps it."""
        text = encode_descriptor(descriptor)
        return text if self._key is None else f"{_SIGNED}{self._mac(text)}:{text}"

    def decode(self, stored: str) -> TaskDescriptor:
        """The descriptor a store holds.

        Raises:
            InvalidDescriptorError: the text is too large, its signature does not match,
                or it does not describe a valid task.
        """
        descriptor = self._cache.get(stored)
        if descriptor is not None:
            self._cache.move_to_end(stored)
            return descriptor
        descriptor = parse_descriptor(self._opened(stored))
        self._cache[stored] = descriptor
        self._cached_bytes += len(stored) + self.ENTRY_OVERHEAD
        while self._cache and (
            len(self._cache) > self._cache_size or self._cached_bytes > self._cache_bytes
        ):
            evicted, _ = self._cache.popitem(last=False)
            self._cached_bytes -= len(evicted) + self.ENTRY_OVERHEAD
        return descriptor

    def _opened(self, stored: str) -> str:
        if len(stored) > _LARGEST_STORED:
            raise InvalidDescriptorError(
                f"the stored descriptor is {len(stored)} characters, over the limit of "
                f"{MAX_DESCRIPTOR_BYTES} bytes that scheduling enforces; it was written "
                "around cml-jobs: reschedule the task from the app"
            )
        if self._key is None:
            if stored.startswith(_SIGNED):
                raise InvalidDescriptorError(
                    "the stored descriptor is signed, but this process has no signing key; "
                    "set CML_JOBS_SIGNING_KEY (signing_key=...) to the app's key"
                )
            return stored
        mac, _, text = stored[len(_SIGNED) :].partition(":")
        if not stored.startswith(_SIGNED) or not hmac.compare_digest(mac, self._mac(text)):
            raise InvalidDescriptorError(
                "the descriptor's signature does not match: it was written without the signing "
                "key (tampered with, or signed with another key); reschedule it from the app"
            )
        return text

    def _mac(self, text: str) -> str:
        assert self._key is not None
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()
