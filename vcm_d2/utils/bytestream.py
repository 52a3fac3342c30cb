"""Unsigned LEB128 lengths and a bounds-checked sequential reader: the byte-level pieces that
the project's stream formats share (TransVFC container, CDRE video side stream, ssf2020
records). Each format names itself in the errors and chooses the error class."""
from typing import Type

__all__ = ["ByteReader", "encode_varint", "MAX_VARINT_BYTES"]

_PAYLOAD_BITS = 7  # per LEB128 byte
_MORE = 1 << _PAYLOAD_BITS  # continuation flag
MAX_VARINT_BYTES = 5  # lengths below 2**35: every stream here bounds its lengths far lower


def encode_varint(n: int) -> bytes:
    """``n`` (0 <= n < 2**35) as unsigned LEB128."""
    if n < 0 or n >= 1 << (_PAYLOAD_BITS * MAX_VARINT_BYTES):
        raise ValueError(f"length {n} cannot be stored")
    out = bytearray()
    while n >= _MORE:
        out.append((n & (_MORE - 1)) | _MORE)
        n >>= _PAYLOAD_BITS
    out.append(n)
    return bytes(out)


class ByteReader:
    """Sequential reads of ``data`` that raise ``error`` naming the stream and what was cut
    off or malformed, never reading past the end."""

    def __init__(self, data: bytes, stream: str = "stream", error: Type[Exception] = ValueError,
                 max_varint_bytes: int = MAX_VARINT_BYTES):
        self.data, self.pos = memoryview(bytes(data)), 0
        self.stream, self.error, self.max_varint_bytes = stream, error, max_varint_bytes

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n > self.remaining:
            raise self.error(f"{self.stream} truncated: {what} needs {n} bytes at offset "
                             f"{self.pos}, only {self.remaining} left")
        self.pos += n
        return bytes(self.data[self.pos - n:self.pos])

    def varint(self, what: str) -> int:
        value = 0
        for i in range(self.max_varint_bytes):
            byte = self.take(1, what)[0]
            value |= (byte & (_MORE - 1)) << (_PAYLOAD_BITS * i)
            if not byte & _MORE:
                return value
        raise self.error(f"corrupted {self.stream}: {what} is not a valid length")
