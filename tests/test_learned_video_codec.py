"""The ssf2020 video codec (vcm_d2.codecs.neural_video) and tools/train_learned_codec.py: exact
bits, decoding from the bytes equal to the encoder's frames, GOPs and random access, corrupt
input, trained checkpoints through the registry and compress_dataset."""
import binascii
import copy
import hashlib
import os
import pickle
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from vcm_d2.codecs import build_codec
from vcm_d2.codecs.annexb import frame_chunks
from vcm_d2.codecs.neural import checkpoint_path
from vcm_d2.codecs.stored import DecodedFrameCache
from vcm_d2.data.pairs import MANIFEST_FILENAME, load_manifest, load_pair_dicts, read_frame
from vcm_d2.data.synthetic import CLASS_NAMES, SyntheticSpec, load_synthetic_images
from vcm_d2.engine.compress import compress_dataset

from test_codecs import H, W, make_frames
from tool_helpers import load_tool

GOP = 3  # 5 frames: I P P I P
QUALITY = 2
SPEC = SyntheticSpec(num_videos=2, frames_per_video=4, height=64, width=64, max_object_size=16)


@pytest.fixture(scope="module")
def frames():
    return make_frames(5)


@pytest.fixture(scope="module")
def coded(frames):
    codec = build_codec("ssf2020", allow_random=True, gop=GOP)
    return codec, codec.encode(frames, QUALITY)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """2 synthetic videos of 4 frames of 64 x 64, registered under a fresh name."""
    name = f"test_ssf_tiny_{uuid.uuid4().hex[:8]}"
    dicts = load_synthetic_images(SPEC, str(tmp_path_factory.mktemp("ssf_synth")))
    DatasetCatalog.register(name, lambda: copy.deepcopy(dicts))
    MetadataCatalog.get(name).set(thing_classes=list(CLASS_NAMES))
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _sealed(body: bytes) -> bytes:
    """A record of ``body`` (a record without its last 2 bytes) with a valid check."""
    return body + binascii.crc_hqx(body, 0).to_bytes(2, "little")


def test_bits_add_up_and_decoding_the_bytes_gives_the_encoders_frames(coded, frames):
    codec, cs = coded
    assert sum(cs.frame_bits) == 8 * len(cs.bitstream) and all(b > 0 for b in cs.frame_bits)
    chunks = frame_chunks(cs.bitstream, cs.frame_bits)
    # version 1, I-frames at 0 and GOP; an I-frame record holds 2 strings, a P-frame 4
    assert [c[:2] for c in chunks] == [b"\x01I", b"\x01P", b"\x01P", b"\x01I", b"\x01P"]
    assert [f.shape for f in cs.frames] == [(H, W, 3)] * 5 and cs.frames[0].dtype == np.uint8
    threads = torch.get_num_threads()
    other = pickle.loads(pickle.dumps(codec))  # another process: models rebuilt, same seed
    assert not other._models
    decoded = other.decode(cs.bitstream, cs.frame_bits, H, W)
    assert torch.get_num_threads() == threads  # threads=1 only inside the call
    assert all(np.array_equal(a, b) for a, b in zip(decoded, cs.frames))
    streamed = list(codec.encode_stream(iter(frames), QUALITY))
    assert [c.data for c in streamed] == chunks
    assert all(np.array_equal(c.image, f) for c, f in zip(streamed, cs.frames))


def test_gop_boundaries_are_random_access_points(coded, frames):
    codec, cs = coded
    chunks = frame_chunks(cs.bitstream, cs.frame_bits)
    assert codec.random_access_points(chunks) == [0, GOP]
    tail = codec.decode(b"".join(chunks[GOP:]), cs.frame_bits[GOP:], H, W)
    assert all(np.array_equal(a, b) for a, b in zip(tail, cs.frames[GOP:]))
    with pytest.raises(ValueError, match="I-frame"):
        codec.decode(b"".join(chunks[1:]), cs.frame_bits[1:], H, W)
    # a new GOP restarts prediction: its frames do not depend on the frames before it
    alone = codec.encode(frames[GOP:], QUALITY)
    assert alone.bitstream == b"".join(chunks[GOP:])
    intra = build_codec("ssf2020", allow_random=True, gop=1).encode(frames[:2], QUALITY)
    assert intra.frame_bits[0] == cs.frame_bits[0]
    assert codec.random_access_points(frame_chunks(intra.bitstream, intra.frame_bits)) == [0, 1]


def test_corrupt_or_truncated_input_raises(coded):
    codec, cs = coded
    chunks = frame_chunks(cs.bitstream, cs.frame_bits)

    def decode(records):
        return codec.decode(b"".join(records), [8 * len(r) for r in records], H, W)

    with pytest.raises(ValueError, match="truncated"):
        codec.decode(cs.bitstream[:-3], cs.frame_bits, H, W)
    with pytest.raises(ValueError, match="corrupt"):  # a record cut short
        decode([chunks[0], chunks[1][:-5]])
    flipped = bytearray(chunks[1])
    flipped[len(flipped) // 2] ^= 0x10
    with pytest.raises(ValueError, match="CRC"):
        decode([chunks[0], bytes(flipped)])
    with pytest.raises(ValueError, match="version"):
        decode([_sealed(b"\x02" + chunks[0][1:-2])])
    with pytest.raises(ValueError, match="quality"):
        decode([_sealed(chunks[0][:2] + b"\x00" + chunks[0][3:-2])])
    with pytest.raises(ValueError, match="left over"):
        decode([_sealed(chunks[0][:-2] + b"\x00")])
    with pytest.raises(ValueError, match="does not match"):
        codec.decode(cs.bitstream, cs.frame_bits, 170, W)
    with pytest.raises(ValueError, match="corrupt"):
        codec.decode(bytes(len(cs.bitstream)), cs.frame_bits, H, W)


def test_options_and_quality_are_checked():
    with pytest.raises(ValueError, match="weights"):
        build_codec("ssf2020")
    with pytest.raises(ValueError, match="gop"):
        build_codec("ssf2020", allow_random=True, gop=0)
    codec = build_codec("ssf2020", allow_random=True)
    for quality in (0, 10, 1.5):
        with pytest.raises(ValueError, match="quality"):
            codec.encode(make_frames(1), quality)
    with pytest.raises(FileNotFoundError):
        build_codec("ssf2020", weights="/nonexistent/q{quality}.pth").encode(make_frames(1), 1)


def test_trained_checkpoint_round_trips_through_the_registry(tiny_dataset, tmp_path):
    tool = load_tool("train_learned_codec")
    out = str(tmp_path / "ckpt")
    args = ["--codec", "ssf2020", "--qualities", str(QUALITY), "--output", out, "--dataset",
            tiny_dataset, "--iterations", "2", "--batch-size", "1", "--clip-length", "2",
            "--no-progress"]
    assert tool.main(args) == 0
    final = os.path.join(out, "ssf2020", f"q{QUALITY}.pth")
    assert os.path.exists(final)
    assert os.path.exists(os.path.join(out, "ssf2020", f"q{QUALITY}.train.pth"))
    mtime = os.path.getmtime(final)
    assert tool.main(args) == 0 and os.path.getmtime(final) == mtime  # done: not retrained

    weights = os.path.join(out, "ssf2020")  # or a path with "{quality}": the same file
    assert checkpoint_path(weights, QUALITY) == checkpoint_path(
        os.path.join(weights, "q{quality}.pth"), QUALITY) == final
    codec = build_codec("ssf2020", weights=weights, gop=2)
    saved = torch.load(final, map_location="cpu", weights_only=True, mmap=True)["state_dict"]
    loaded = codec._model(QUALITY).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())
    frames = make_frames(3)
    cs = codec.encode(frames, QUALITY)
    assert sum(cs.frame_bits) == 8 * len(cs.bitstream)
    decoded = codec.decode(cs.bitstream, cs.frame_bits, H, W)
    assert all(np.array_equal(a, b) for a, b in zip(decoded, cs.frames))
    with pytest.raises(FileNotFoundError):  # only the trained quality has a checkpoint
        codec.encode(frames, QUALITY + 1)


def test_training_resumes_where_it_stopped(tiny_dataset, tmp_path, capsys):
    """1 iteration then a rerun to 2 gives the weights of 2 iterations in one run (the image
    codec: the same tool path, a smaller model)."""
    tool = load_tool("train_learned_codec")

    def train(out, iterations):
        assert tool.main(["--codec", "bmshj2018_hyperprior", "--qualities", "1", "--output", out,
                          "--dataset", tiny_dataset, "--iterations", str(iterations),
                          "--batch-size", "1", "--clip-length", "1", "--crop-size", "64",
                          "--no-progress"]) == 0
        path = os.path.join(out, "bmshj2018_hyperprior", "q1.pth")
        return torch.load(path, map_location="cpu", weights_only=True)

    resumed_dir, straight_dir = str(tmp_path / "resumed"), str(tmp_path / "straight")
    assert train(resumed_dir, 1)["iterations"] == 1
    resumed, straight = train(resumed_dir, 2), train(straight_dir, 2)
    assert resumed["iterations"] == straight["iterations"] == 2
    assert all(torch.equal(resumed["state_dict"][k], v) for k, v in straight["state_dict"].items())
    assert tool.main(["--codec", "bmshj2018_hyperprior", "--qualities", "1", "--output",
                      resumed_dir, "--dataset", tiny_dataset, "--iterations", "3", "--lmbda", "0.5",
                      "--crop-size", "64", "--no-progress"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert tool.main(["--codec", "ssf2020", "--qualities", "1", "--output", resumed_dir,
                      "--dataset", tiny_dataset, "--crop-size", "64"]) == 2
    assert "multiples of 128" in capsys.readouterr().err


def test_learning_rate_drops_at_its_fraction_of_the_iterations(tiny_dataset, tmp_path, capsys):
    """--lr-drop 0.5 of 2 iterations: the second step runs at lr * factor, also when resumed
    after the first; a state written before the option existed resumes as a constant rate."""
    tool = load_tool("train_learned_codec")

    def train(out, iterations, *extra):
        return tool.main(["--codec", "bmshj2018_hyperprior", "--qualities", "1", "--output", out,
                          "--dataset", tiny_dataset, "--iterations", str(iterations),
                          "--batch-size", "1", "--clip-length", "1", "--crop-size", "64",
                          "--lr", "0.001", "--no-progress", *extra])

    def state(out):
        return torch.load(os.path.join(out, "bmshj2018_hyperprior", "q1.train.pth"),
                          map_location="cpu", weights_only=True)

    def weights(out):
        return torch.load(os.path.join(out, "bmshj2018_hyperprior", "q1.pth"),
                          map_location="cpu", weights_only=True)["state_dict"]

    drop = ["--lr-drop", "0.5", "--lr-drop-factor", "0.25"]
    straight, resumed, constant = (str(tmp_path / n) for n in ("straight", "resumed", "constant"))
    assert train(straight, 2, *drop) == 0
    assert state(straight)["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.00025)
    assert train(resumed, 1, *drop) == 0
    assert state(resumed)["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.001)
    assert train(resumed, 2, *drop) == 0
    assert all(torch.equal(weights(resumed)[k], v) for k, v in weights(straight).items())
    assert train(constant, 2) == 0
    assert not all(torch.equal(weights(constant)[k], v) for k, v in weights(straight).items())

    # a state of the first format (no lr_drop settings) resumes under the constant-rate defaults
    old = state(constant)
    for key in ("lr_drop", "lr_drop_factor"):
        del old["settings"][key]
    torch.save(old, os.path.join(constant, "bmshj2018_hyperprior", "q1.train.pth"))
    assert train(constant, 3) == 0
    assert train(constant, 4, *drop) == 2  # but not under another schedule
    assert "other settings" in capsys.readouterr().err
    assert train(str(tmp_path / "bad"), 2, "--lr-drop", "1") == 2
    assert "--lr-drop must be in [0, 1)" in capsys.readouterr().err


def test_compress_dataset_with_ssf2020_counts_the_codecs_bits(tiny_dataset, tmp_path):
    options = {"allow_random": True, "gop": 2}
    path = compress_dataset(tiny_dataset, "ssf2020", [QUALITY], str(tmp_path / "out"),
                            codec_options=options, progress=False, storage="bitstream")[QUALITY]
    manifest = load_manifest(path)
    codec = build_codec("ssf2020", **options)
    records = load_pair_dicts(path, tiny_dataset)
    for sequence in sorted({f["sequence"] for f in manifest["frames"]}):
        frames = [f for f in manifest["frames"] if f["sequence"] == sequence]
        originals = [read_frame({"file_name": f["original_file_name"]}) for f in frames]
        cs = codec.encode(originals, QUALITY)
        assert [f["bits"] for f in frames] == cs.frame_bits
        # the last frame (a P-frame of the second GOP) decodes from its GOP's bytes alone
        last = next(r for r in records if r["image_id"] == frames[-1]["image_id"])
        cache = DecodedFrameCache()
        assert np.array_equal(read_frame(last, "RGB", cache), cs.frames[-1])
        assert cache.decodes == 1
    assert manifest["total_bits"] == sum(f["bits"] for f in manifest["frames"])


def test_finetune_chain_starts_each_quality_from_the_previous_one(tiny_dataset, tmp_path, capsys):
    """--finetune-iterations: q2 starts from q1's final weights (learning rates 0, so q2 keeps
    exactly the weights it started from); a quality of another width refuses to start."""
    tool = load_tool("train_learned_codec")
    out = str(tmp_path / "chain")
    common = ["--codec", "bmshj2018_hyperprior", "--output", out, "--dataset", tiny_dataset,
              "--iterations", "1", "--batch-size", "1", "--clip-length", "1", "--crop-size",
              "64", "--lr", "0", "--aux-lr", "0", "--no-progress"]
    assert tool.main(common + ["--qualities", "1"]) == 0
    q1 = os.path.join(out, "bmshj2018_hyperprior", "q1.pth")
    ckpt = torch.load(q1, map_location="cpu", weights_only=True)
    ckpt["state_dict"]["g_a.0.weight"] += 0.5  # marks q1's weights apart from the seed's init
    torch.save(ckpt, q1)
    assert tool.main(common + ["--qualities", "1", "2", "--finetune-iterations", "1"]) == 0
    q2 = torch.load(os.path.join(out, "bmshj2018_hyperprior", "q2.pth"), map_location="cpu",
                    weights_only=True)
    assert q2["settings"]["init"] == "q1.pth" and q2["iterations"] == 1
    assert torch.equal(q2["state_dict"]["g_a.0.weight"], ckpt["state_dict"]["g_a.0.weight"])
    assert tool.main(common + ["--qualities", "2"]) == 2  # q2's state: fine-tuned, not scratch
    assert "other settings" in capsys.readouterr().err
    # the zoo's bmshj2018 is wider from quality 6 on: no chain across that
    assert tool.main(common + ["--qualities", "5", "6", "--finetune-iterations", "1"]) == 2
    assert "another architecture" in capsys.readouterr().err


def test_a_run_compresses_each_codec_with_its_own_options(tiny_dataset, tmp_path):
    """``learned_codec_options`` ("NAME=WEIGHTS", as benchmarks take it) and ``Run.compress``
    with options per codec: the learned codec's pairs are coded with its trained checkpoint
    (bits equal to that codec's), x264's with its GOP; bad specs fail before any work."""
    from vcm_d2.codecs.neural import learned_codec_options
    from vcm_d2.engine.compress import output_dir_for
    from vcm_d2.pipeline import Run

    tool = load_tool("train_learned_codec")
    out = str(tmp_path / "ckpt")
    assert tool.main(["--codec", "bmshj2018_hyperprior", "--qualities", "1", "--output", out,
                      "--dataset", tiny_dataset, "--iterations", "1", "--batch-size", "1",
                      "--clip-length", "1", "--crop-size", "64", "--no-progress"]) == 0
    weights = os.path.join(out, "bmshj2018_hyperprior")
    name, options = learned_codec_options(
        f"bmshj2018_hyperprior={os.path.relpath(weights)}", [1], {"gop": 2})
    with open(os.path.join(weights, "q1.pth"), "rb") as f:
        checksums = {"1": hashlib.sha256(f.read()).hexdigest()}
    assert (name, options) == ("bmshj2018_hyperprior",  # image codec: no GOP
                               {"weights": weights, "checksums": checksums})
    assert learned_codec_options(f"ssf2020={weights}", [1], {"gop": 2}) == (
        "ssf2020", {"gop": 2, "weights": weights, "checksums": checksums})
    with pytest.raises(FileNotFoundError, match="q2.pth"):
        learned_codec_options(f"bmshj2018_hyperprior={weights}", [1, 2])
    with pytest.raises(ValueError, match="not a learned codec"):
        learned_codec_options(f"x264={weights}", [1])
    with pytest.raises(ValueError, match="NAME=WEIGHTS"):
        learned_codec_options("bmshj2018_hyperprior", [1])

    run = Run(str(tmp_path / "run"), "", threads=torch.get_num_threads())
    qualities = {name: [1], "x264": [30]}
    per_codec = {name: options, "x264": {"gop": 2}}
    pairs = run.compress((tiny_dataset,), ["x264", name], qualities.get, per_codec.get, 1, "compress")
    assert len(pairs[tiny_dataset, name]) == len(pairs[tiny_dataset, "x264"]) == 1
    for codec in per_codec:
        manifest = load_manifest(os.path.join(
            output_dir_for(run.compressed_root, tiny_dataset, codec, qualities[codec][0]),
            MANIFEST_FILENAME))
        assert manifest["codec_options"] == per_codec[codec]
    manifest = load_manifest(os.path.join(output_dir_for(run.compressed_root, tiny_dataset, name, 1),
                                          MANIFEST_FILENAME))
    first = manifest["frames"][0]
    original = read_frame({"file_name": first["original_file_name"]})
    assert first["bits"] == build_codec(name, **options).encode([original], 1).frame_bits[0]

    # retrained weights at the same path: neither coded with under the old options nor mistaken
    # for the ones the run's pairs were made with
    path = os.path.join(weights, "q1.pth")
    ckpt = torch.load(path, weights_only=True)
    state = ckpt["state_dict"] if "state_dict" in ckpt else ckpt
    state["g_a.0.weight"] += 0.01
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="changed since"):
        build_codec(name, **options).encode([original], 1)
    _, new_options = learned_codec_options(f"{name}={weights}", [1])
    assert new_options["checksums"] != options["checksums"]
    with pytest.raises(ValueError, match="codec options"):
        run.compress((tiny_dataset,), [name], qualities.get, {name: new_options}.get, 1, "again")
    with pytest.raises(ValueError, match="checksums are given without weights"):
        build_codec(name, checksums=checksums, allow_random=True)
