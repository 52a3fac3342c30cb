"""TransVFC bitstream container: round trip, rate accounting, and refusal of corrupted,
truncated, padded or malformed streams; a real I/P GOP decoded bit-exactly through it."""
import os
import struct
import zlib

import pytest
import torch

from vcm_d2.modeling.transvfc import TransVFCCodec
from vcm_d2.modeling.transvfc.container import (
    FORMAT_VERSION,
    MAGIC,
    MODEL_HASH_BYTES,
    ContainerError,
    StreamHeader,
    encode_frame,
    encode_header,
    frame_bits,
    header_num_bytes,
    load_stream,
    read_stream,
    save_stream,
    write_stream,
)

from transvfc_helpers import TinyPerception

HASH = bytes(range(MODEL_HASH_BYTES))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _header(num_frames, **kw):
    base = dict(image_size=(97, 131), original_size=(194, 262), feature_size=(25, 33), gop=12,
                num_frames=num_frames, quality_index=2, threads=2, model_hash=HASH,
                model_id="transvfc-test")
    return StreamHeader(**{**base, **kw})


def _records():
    """Hand-made records: an I-frame, a P-frame with an empty latent and one with a latent
    longer than 127 bytes (two-byte length)."""
    return [
        {"type": "I", "strings": [[b"\x01\x02\x03"], [b"z"]], "shape": (25, 33)},
        {"type": "P", "strings": [[b"m"], [b""], [b"r" * 5], [b"rz"]], "shape": (25, 33)},
        {"type": "P", "strings": [[bytes(range(200))], [b"a"], [b"b"], [b"c"]], "shape": (25, 33)},
    ]


@pytest.fixture
def stream():
    return write_stream(_header(3), _records())


def test_round_trip_and_rate_accounting(stream):
    parsed = read_stream(stream)
    assert parsed.header == _header(3)
    assert [r["type"] for r in parsed.records] == ["I", "P", "P"]
    assert parsed.records == _records()
    assert parsed.header_bytes == header_num_bytes("transvfc-test")
    assert parsed.header_bytes == len(encode_header(_header(3)))
    assert parsed.frame_bytes == [len(encode_frame(r)) for r in _records()]
    bits = frame_bits(stream)
    assert sum(bits) == 8 * len(stream)
    assert bits[0] == 8 * (parsed.header_bytes + parsed.frame_bytes[0])  # header -> frame 0
    assert bits[1:] == [8 * n for n in parsed.frame_bytes[1:]]
    # overhead per frame: type byte, one length byte per short latent, 4-byte CRC
    assert parsed.frame_bytes[1] == 1 + 4 + (1 + 0 + 5 + 2) + 4


def test_every_truncation_is_refused(stream):
    for cut in range(len(stream)):
        with pytest.raises(ContainerError, match="truncated|CRC"):
            read_stream(stream[:cut])


def test_every_single_bit_flip_is_refused(stream):
    for pos in range(len(stream)):
        for bit in (0, 7):
            data = bytearray(stream)
            data[pos] ^= 1 << bit
            with pytest.raises(ContainerError):
                read_stream(bytes(data))


def test_specific_errors(stream):
    with pytest.raises(ContainerError, match="not a TransVFC stream"):
        read_stream(b"RIFF" + stream[4:])
    bumped = bytearray(stream)
    bumped[len(MAGIC)] = FORMAT_VERSION + 1
    with pytest.raises(ContainerError, match="unsupported TransVFC container version"):
        read_stream(bytes(bumped))
    with pytest.raises(ContainerError, match="bytes after the last"):
        read_stream(stream + b"\x00")
    frame0 = len(encode_header(_header(3)))
    payload = bytearray(stream)
    payload[frame0 + 2] ^= 0xFF  # inside the first latent
    with pytest.raises(ContainerError, match="CRC mismatch in frame 0"):
        read_stream(bytes(payload))
    # a well-formed stream (valid CRCs) whose first frame is a P-frame
    head = encode_header(_header(1))
    with pytest.raises(ContainerError, match="first frame is not an I-frame"):
        read_stream(head + encode_frame(_records()[1]))
    # an unknown frame type with a valid CRC
    bad = bytearray(encode_frame(_records()[0])[:-4])
    bad[0] = ord("B")
    bad += struct.pack(">I", zlib.crc32(bad))
    with pytest.raises(ContainerError, match="unknown type"):
        read_stream(head + bytes(bad))


def test_invalid_inputs_are_refused_on_write():
    with pytest.raises(ValueError, match="announces 2 frames"):
        write_stream(_header(2), _records())
    with pytest.raises(ValueError, match="first frame of a stream must be an I-frame"):
        write_stream(_header(1), [_records()[1]])
    with pytest.raises(ValueError, match="codes a"):
        write_stream(_header(1), [dict(_records()[0], shape=(1, 1))])
    with pytest.raises(ValueError, match="batch size 1"):
        encode_frame({"type": "I", "strings": [[b"a", b"b"], [b"z"]], "shape": (1, 1)})
    with pytest.raises(ValueError, match="record type"):
        encode_frame({"type": "B", "strings": [], "shape": (1, 1)})
    with pytest.raises(ValueError, match="holds 2 latents"):
        encode_frame({"type": "I", "strings": [[b"a"]], "shape": (1, 1)})
    with pytest.raises(ValueError, match="model_hash"):
        encode_header(_header(1, model_hash=b"short"))
    with pytest.raises(ValueError, match="model_id length"):
        encode_header(_header(1, model_id="x" * 256))
    with pytest.raises(ValueError, match="image H"):
        encode_header(_header(1, image_size=(0, 5)))
    with pytest.raises(ValueError, match="threads"):
        encode_header(_header(1, threads=0))
    with pytest.raises(ValueError, match="gop"):
        encode_header(_header(1, gop=70000))


def test_save_is_atomic_and_loads_back(tmp_path, stream):
    path = tmp_path / "sub" / "clip.tvfc"
    save_stream(str(path), stream)
    assert load_stream(str(path)) == stream
    assert sorted(os.listdir(path.parent)) == ["clip.tvfc"]  # no temp file left behind


# ------------------------------------------------------------------ a real GOP through it
@torch.no_grad()
def test_gop_with_i_and_p_frames_decodes_bit_exactly_through_the_container():
    torch.manual_seed(0)
    codec = TransVFCCodec(in_channels=32, reduced_channels=8, reduction_res_blocks=1,
                          motion_estimation_channels=8, motion_channels=8,
                          motion_latent_channels=8, hyper_channels=8, hidden_channels=16,
                          num_schemes=4, scheme_expansions=(2, 2), residual_latent_channels=8,
                          intra_latent_channels=8, condition_channels=4, perception_channels=8,
                          temporal_prior_channels=8, entropy_parameter_channels=16, gop=3).eval()
    codec.update(force=True)
    perception = TinyPerception(32, 8)
    g = torch.Generator().manual_seed(1)
    base = torch.randn(1, 32, 13, 21, generator=g)
    features = [base + 0.05 * t * torch.randn(1, 32, 13, 21, generator=g) for t in range(5)]
    records, encoded = codec.compress(features, perception)
    assert [r["type"] for r in records] == ["I", "P", "P", "I", "P"]
    header = _header(5, feature_size=(13, 21), gop=3, threads=torch.get_num_threads())
    parsed = read_stream(write_stream(header, records))
    decoded = codec.decompress(parsed.records, perception)
    for a, b in zip(encoded, decoded):
        assert torch.equal(a, b)
