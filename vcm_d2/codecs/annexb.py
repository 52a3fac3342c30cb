"""Annex-B byte-stream parsing for H.264, H.265 and H.266 (VVC).

Used to (a) strip encoder-info SEI messages (x264 writes a ~600-byte "user data
unregistered" SEI into the first packet, which would dominate the rate of small frames),
(b) split a raw VVC stream into access units to get per-frame bit counts and (c) find the
frames a stored stream can be decoded from (IDR access units carrying their parameter sets).

A NAL unit here is the raw byte span from the start of its start code (``00 00 01``,
plus one leading ``00`` if present) up to the next start code, so concatenating the spans
of all NAL units gives back the input exactly.
"""
from dataclasses import dataclass
from typing import List, Sequence, Tuple

START_CODE = b"\x00\x00\x01"

# H.264 (ITU-T H.264 Table 7-1) and H.265 (ITU-T H.265 Table 7-1) SEI NAL unit types.
H264_NAL_SEI = 6
H265_NAL_PREFIX_SEI = 39
H265_NAL_SUFFIX_SEI = 40
# SEI payloadType of user_data_unregistered (identical in H.264 / H.265 / H.266).
SEI_USER_DATA_UNREGISTERED = 5

# H.266 (ITU-T H.266 Table 5) NAL unit types used for access-unit splitting.
VVC_MAX_VCL_TYPE = 11  # 0..11 are VCL (coded slice) NAL units
VVC_NAL_PREFIX_APS = 17
VVC_NAL_PH = 19
VVC_NAL_AUD = 20
# Non-VCL types that follow the slices of their picture inside the same access unit.
VVC_SUFFIX_TYPES = frozenset({18, 21, 22, 24, 25})  # suffix APS, EOS, EOB, suffix SEI, filler

CODEC_H264 = "h264"
CODEC_HEVC = "hevc"
CODEC_VVC = "vvc"
_NAL_HEADER_BYTES = {CODEC_H264: 1, CODEC_HEVC: 2, CODEC_VVC: 2}
# IDR picture NAL types and the parameter sets an access unit needs to be decoded on its own
# (H.264 Table 7-1, H.265 Table 7-1, H.266 Table 5; the VPS is optional in H.266).
_IDR_TYPES = {CODEC_H264: frozenset({5}), CODEC_HEVC: frozenset({19, 20}),
              CODEC_VVC: frozenset({7, 8})}
_PARAMETER_SET_TYPES = {CODEC_H264: frozenset({7, 8}), CODEC_HEVC: frozenset({32, 33, 34}),
                        CODEC_VVC: frozenset({15, 16})}


@dataclass(frozen=True)
class NalUnit:
    """One NAL unit: ``raw`` is its full byte span, ``header`` the offset of the NAL header."""

    raw: bytes
    header: int  # offset of the first NAL header byte inside ``raw`` (= start-code length)

    @property
    def payload(self) -> bytes:
        """NAL header + payload (the bytes after the start code), emulation prevention kept."""
        return self.raw[self.header :]


def split_nal_units(data: bytes) -> List[NalUnit]:
    """Split an Annex-B byte stream into NAL units.

    Raises ValueError if ``data`` is non-empty and does not begin with a start code (after
    optional zero bytes), which is how a corrupt or non-Annex-B stream shows up.
    """
    data = bytes(data)
    starts = []
    pos = data.find(START_CODE)
    while pos >= 0:
        starts.append(pos)
        pos = data.find(START_CODE, pos + len(START_CODE))
    if not data:
        return []
    if not starts or data[: starts[0]].strip(b"\x00"):
        raise ValueError("bitstream is not an Annex-B stream (no leading start code)")
    units = []
    for i, sc in enumerate(starts):
        # A 4-byte start code (zero_byte + 00 00 01) belongs to the NAL unit it introduces.
        begin = sc - 1 if sc > 0 and data[sc - 1] == 0 else sc
        if i == 0:
            begin = 0  # leading zero bytes stay with the first NAL unit
        end = starts[i + 1] if i + 1 < len(starts) else len(data)
        if i + 1 < len(starts) and starts[i + 1] > 0 and data[starts[i + 1] - 1] == 0:
            end = starts[i + 1] - 1
        units.append(NalUnit(raw=data[begin:end], header=sc - begin + len(START_CODE)))
    return units


def h264_nal_type(nal: NalUnit) -> int:
    return nal.raw[nal.header] & 0x1F if len(nal.raw) > nal.header else -1


def hevc_nal_type(nal: NalUnit) -> int:
    return (nal.raw[nal.header] >> 1) & 0x3F if len(nal.raw) > nal.header else -1


def vvc_nal_type(nal: NalUnit) -> int:
    """VVC nal_unit_type: the top 5 bits of the second NAL header byte."""
    return nal.raw[nal.header + 1] >> 3 if len(nal.raw) > nal.header + 1 else -1


def remove_emulation_prevention(ebsp: bytes) -> bytes:
    """NAL payload bytes -> RBSP (drop each 0x03 that follows two zero bytes)."""
    out = bytearray()
    zeros = 0
    for b in ebsp:
        if zeros >= 2 and b == 3:
            zeros = 0
            continue
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


def add_emulation_prevention(rbsp: bytes) -> bytes:
    """RBSP -> NAL payload bytes (insert 0x03 before a byte <= 3 that follows two zeros)."""
    out = bytearray()
    zeros = 0
    for b in rbsp:
        if zeros >= 2 and b <= 3:
            out.append(3)
            zeros = 0
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


def _read_sei_value(rbsp: bytes, pos: int):
    """Read an SEI payloadType/payloadSize (a run of 0xFF bytes plus a final byte)."""
    value = 0
    while pos < len(rbsp) and rbsp[pos] == 0xFF:
        value += 0xFF
        pos += 1
    if pos >= len(rbsp):
        raise ValueError("truncated SEI message header")
    return value + rbsp[pos], pos + 1


def _split_sei_messages(rbsp: bytes) -> List[tuple]:
    """Split an SEI RBSP (without NAL header) into (payload_type, message_bytes) tuples.

    Stops at the rbsp_trailing_bits byte (0x80) that ends the SEI RBSP.
    """
    messages = []
    pos = 0
    while pos < len(rbsp) and not (rbsp[pos] == 0x80 and not rbsp[pos + 1 :].strip(b"\x00")):
        begin = pos
        ptype, pos = _read_sei_value(rbsp, pos)
        psize, pos = _read_sei_value(rbsp, pos)
        pos += psize
        if pos > len(rbsp):
            raise ValueError("SEI payload extends past the end of its NAL unit")
        messages.append((ptype, rbsp[begin:pos]))
    return messages


def _is_sei(nal: NalUnit, codec: str) -> bool:
    if codec == CODEC_H264:
        return h264_nal_type(nal) == H264_NAL_SEI
    if codec == CODEC_HEVC:
        return hevc_nal_type(nal) in (H265_NAL_PREFIX_SEI, H265_NAL_SUFFIX_SEI)
    raise ValueError(f"SEI stripping supports {CODEC_H264!r} and {CODEC_HEVC!r}, not {codec!r}")


def strip_user_data_unregistered_sei(data: bytes, codec: str) -> bytes:
    """Remove every user_data_unregistered SEI message from an H.264/H.265 Annex-B stream.

    An SEI NAL unit that carries only such messages is dropped with its start code; one
    that also carries other messages is rewritten without them. Every other NAL unit is
    kept byte for byte.
    """
    hdr = _NAL_HEADER_BYTES[codec]
    out = []
    for nal in split_nal_units(data):
        if not _is_sei(nal, codec):
            out.append(nal.raw)
            continue
        body = nal.payload
        rbsp = remove_emulation_prevention(body[hdr:])
        messages = _split_sei_messages(rbsp)
        kept = [m for t, m in messages if t != SEI_USER_DATA_UNREGISTERED]
        if len(kept) == len(messages):
            out.append(nal.raw)
        elif kept:
            new_rbsp = b"".join(kept) + b"\x80"
            out.append(nal.raw[: nal.header] + body[:hdr] + add_emulation_prevention(new_rbsp))
    return b"".join(out)


def _vvc_starts_picture(nal: NalUnit, nal_type: int) -> bool:
    """True for a picture header NAL or a slice whose header carries the picture header.

    sh_picture_header_in_slice_header_flag is the first bit of every slice header; when
    it is 1 the picture has exactly one slice, so that slice starts a new picture.
    """
    if nal_type == VVC_NAL_PH:
        return True
    if nal_type <= VVC_MAX_VCL_TYPE:
        first = nal.header + _NAL_HEADER_BYTES[CODEC_VVC]
        return len(nal.raw) > first and bool(nal.raw[first] & 0x80)
    return False


def split_vvc_access_units(data: bytes) -> List[bytes]:
    """Split a raw H.266 Annex-B stream into access units (one per coded picture).

    An access unit starts at an AUD, or at the prefix NAL units (parameter sets, prefix
    APS/SEI) that precede a new picture's picture header / first slice; suffix NAL units
    stay with the picture they follow. Raises ValueError on a stream without pictures.
    """
    units: List[List[bytes]] = []
    current: List[bytes] = []
    current_has_picture = False
    pending: List[bytes] = []  # prefix NAL units waiting for the picture they belong to
    for nal in split_nal_units(data):
        t = vvc_nal_type(nal)
        if t == VVC_NAL_AUD or _vvc_starts_picture(nal, t):
            if current_has_picture:
                units.append(current)
                current = []
            current += pending + [nal.raw]
            pending = []
            current_has_picture = t != VVC_NAL_AUD
        elif 0 <= t <= VVC_MAX_VCL_TYPE:
            if not current_has_picture and not current:
                raise ValueError("VVC slice without a picture header (corrupt bitstream)")
            current += pending + [nal.raw]
            pending = []
            current_has_picture = True
        elif t in VVC_SUFFIX_TYPES and current:
            current.append(nal.raw)
        else:
            pending.append(nal.raw)
    if current_has_picture:
        units.append(current + pending)
    elif units:
        units[-1] += current + pending
    if not units:
        raise ValueError("no coded picture found in VVC bitstream")
    return [b"".join(u) for u in units]


def take_vvc_access_units(data: bytes, end_of_stream: bool) -> Tuple[List[bytes], bytes]:
    """Split the finished access units off the start of a growing H.266 stream.

    Returns (access units, rest): an access unit is finished once the next picture has begun,
    or at the end of the stream, so ``rest`` holds the last, maybe unfinished, one (empty at
    the end of the stream). Splitting the concatenation of the units and ``rest`` again gives
    the same units, so taking units as bytes arrive equals ``split_vvc_access_units`` of the
    whole stream.
    """
    if not data:
        return [], b""
    try:
        units = split_vvc_access_units(data)
    except ValueError:
        if end_of_stream:
            raise
        return [], bytes(data)  # no picture yet
    return (units, b"") if end_of_stream else (units[:-1], units[-1])


def is_random_access_unit(access_unit: bytes, codec: str) -> bool:
    """Whether one frame's bytes hold an IDR picture and every parameter set it needs, so that
    decoding can start there (an IDR picture references nothing before it)."""
    nal_type = {CODEC_H264: h264_nal_type, CODEC_HEVC: hevc_nal_type, CODEC_VVC: vvc_nal_type}[codec]
    types = {nal_type(nal) for nal in split_nal_units(access_unit)}
    return bool(types & _IDR_TYPES[codec]) and _PARAMETER_SET_TYPES[codec] <= types


def frame_chunks(bitstream: bytes, frame_bits: Sequence[int]) -> List[bytes]:
    """Split ``bitstream`` into per-frame byte strings by ``frame_bits``.

    Raises ValueError unless every entry is a non-negative multiple of 8 and they add up
    to exactly ``8 * len(bitstream)`` (catches truncated or padded bitstreams).
    """
    bits = [int(b) for b in frame_bits]
    if not bits:
        raise ValueError("frame_bits is empty")
    if any(b < 0 or b % 8 for b in bits):
        raise ValueError(f"frame_bits must be non-negative multiples of 8, got {bits}")
    if sum(bits) != 8 * len(bitstream):
        raise ValueError(
            f"frame_bits add up to {sum(bits)} bits but the bitstream has "
            f"{8 * len(bitstream)} bits (truncated or mismatched bitstream)"
        )
    chunks, pos = [], 0
    for b in bits:
        chunks.append(bytes(bitstream[pos : pos + b // 8]))
        pos += b // 8
    return chunks
