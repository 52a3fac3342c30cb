"""Benchmark of CDRE's side bitstream (raw vs cabac; header per frame vs once per video) and,
optionally, of the CDRE modules' size.

Side stream: binary maps of a 720p frame's latent (6 x 23 x 40 bits) from
(a) thresholding a spatially smooth, temporally AR(1)-correlated Gaussian random field (a
    stand-in for real y_hat maps until a trained model exists) and
(b) i.i.d. random bits (worst case: cabac must fall back to raw + header).
Each frame is coded as its own packet with the previous frame as context (streaming), and the
whole sequence once as a single packet. Reports bytes, ratio to raw, KB/s at the frame rate and
encode / decode time per frame.

Header per frame vs once per video (``--video-frames`` frames per video, default 12, as the
synthetic benchmark's videos): side-stream bits and bpp per frame of the image stream of every
frame (15-byte header each, what an evaluation counted before the video stream) and of the
video stream (13-byte header once, charged to the first frame, and a 2-byte check per record),
raw and cabac, at 128x128 (the synthetic frames: 6 x 4 x 4 = 96 bits of raw payload) and at
--width x --height, on the same map sources. For maps of a trained model use
``benchmarks/cdre_complexity.py --weights ...`` (its part 3 has the same columns).

Complexity (--complexity): parameters and MACs per input pixel (fvcore FlopCountAnalysis,
which counts one multiply-add per conv/linear weight use, plus a handle for the fused
attention's two matmuls) of the encoder side, the decoders
and the embeddings for R50 stage inputs and Swin-T widths.

Library range coder (--constriction, needs ``pip install constriction``): can the range coder
of the PyPI package ``constriction`` replace our hand-written one? The same maps are coded with
the same context model (our contexts and adaptive counts, in Python; constriction gets one
Bernoulli probability per bit and decodes bit by bit, since a bit's probability depends on the
bits decoded before it), as per-frame records of a video (probabilities carried over, previous
frame as reference; --video-frames frames at 128x128, --frames at --width x --height) and as one
payload of the whole video. Payload bytes per frame (no header, length or check: the same for
both): the ideal sum(-log2 p) / 8 under the model, ours (short end), constriction's 32-bit words
and those words without their trailing zero bytes (what a record that stores its byte length
would carry); encode / decode CPU ms per frame. Checks that constriction codes with exactly the
probabilities our coder uses and that its decode round-trips.

    python benchmarks/cdre_side_stream.py [--frames 30] [--video-frames 12] [--complexity] [--constriction]
"""
import argparse
import time
import warnings

import numpy as np
from scipy.ndimage import gaussian_filter

from vcm_d2.modeling.cdre.binary_coder import (
    COUNT_LIMIT,
    COUNT_STEP,
    ContextModel,
    _context_base,
    _frame_reference,
    _reference_states,
    cabac_decode,
    cabac_encode,
)
from vcm_d2.modeling.cdre.side_stream import (
    HEADER_BYTES,
    decode_side_stream,
    encode_side_stream,
    parse_side_stream_header,
)
from vcm_d2.modeling.cdre.video_side_stream import VIDEO_HEADER_BYTES, encode_video_side_stream, read_video_side_stream

LATENT_STRIDE = 32
SYNTHETIC_FRAME = (128, 128)  # (H, W) of the synthetic benchmark's frames


def correlated_field_maps(frames, channels, h, w, sigma, rho, rng):
    """Threshold at 0 of a Gaussian field smoothed by ``sigma`` latent cells, AR(1) over time."""

    def noise():
        return gaussian_filter(rng.standard_normal((channels, h, w)), (0, sigma, sigma))

    f, out = noise(), []
    innovation = np.sqrt(1 - rho**2)
    for _ in range(frames):
        out.append(f > 0)
        f = rho * f + innovation * noise()
    return np.stack(out).astype(np.uint8)


def bench_maps(name, maps, fps):
    t = maps.shape[0]
    raw_bytes = len(encode_side_stream(maps, "raw"))
    # streaming: one packet per frame, previous frame as context
    enc_s = dec_s = 0.0
    total, fallbacks, prev = 0, 0, None
    for i in range(t):
        t0 = time.perf_counter()
        data = encode_side_stream(maps[i], "cabac", prev=prev)
        t1 = time.perf_counter()
        out = decode_side_stream(data, prev=prev)
        t2 = time.perf_counter()
        if not np.array_equal(out.numpy().astype(np.uint8), maps[i]):
            raise RuntimeError(f"{name}: round trip mismatch at frame {i}")
        enc_s, dec_s = enc_s + (t1 - t0), dec_s + (t2 - t1)
        total += len(data)
        fallbacks += parse_side_stream_header(data).fallback
        prev = maps[i]
    raw_per_frame = len(encode_side_stream(maps[0], "raw"))
    seq = encode_side_stream(maps, "cabac")
    if not np.array_equal(decode_side_stream(seq).numpy().astype(np.uint8), maps):
        raise RuntimeError(f"{name}: sequence round trip mismatch")
    print(
        f"{name:<34} raw {raw_per_frame:5d} B/frame | cabac/frame {total / t:7.1f} B "
        f"({total / (t * raw_per_frame):.3f} of raw, {total / t * fps / 1000:5.1f} KB/s, "
        f"fallback {fallbacks}/{t}) | one packet {len(seq) / t:7.1f} B/frame "
        f"({(len(seq) - HEADER_BYTES) / (raw_bytes - HEADER_BYTES):.3f} of raw payload) | "
        f"enc {enc_s / t * 1e3:5.2f} ms dec {dec_s / t * 1e3:5.2f} ms per frame"
    )


def map_sources(frames, channels, h, w, rng):
    """(name, (frames, C, h, w) maps) of every synthetic source: AR(1) fields and i.i.d. bits."""
    out = [(f"field sigma={sigma} rho={rho}", correlated_field_maps(frames, channels, h, w, sigma, rho, rng))
           for sigma in (1.0, 2.0) for rho in (0.7, 0.95)]
    return out + [("iid random bits", rng.integers(0, 2, (frames, channels, h, w), dtype=np.uint8))]


def header_per_frame_vs_video(maps, pixels):
    """Bits per frame and bpp of the side stream of one video's maps: an image stream per frame
    vs the video stream, raw and cabac. The video stream's per-frame bits are checked to add up
    to its size and its maps to decode exactly."""
    t = maps.shape[0]
    row = {}
    for mode in ("raw", "cabac"):
        per_frame = sum(8 * len(encode_side_stream(m, mode)) for m in maps) / t
        stream = encode_video_side_stream(maps, mode)
        parsed = read_video_side_stream(stream, num_frames=t)
        if sum(parsed.frame_bits) != 8 * len(stream) or not np.array_equal(parsed.maps.numpy(), maps):
            raise RuntimeError("video side stream: bits or maps do not add up")
        row[mode] = (per_frame, 8 * len(stream) / t)
    return {k: (a, b, a / pixels, b / pixels) for k, (a, b) in row.items()}


def video_table(args, rng):
    print(f"\nheader per frame ({HEADER_BYTES} B) vs once per video ({VIDEO_HEADER_BYTES} B, charged to the "
          f"first frame) -- {args.video_frames} frames per video; bits/frame and bpp")
    print(f"{'frame':>10} {'source':<26} {'mode':<6} {'per frame':>10} {'per video':>10} "
          f"{'bpp per frame':>14} {'bpp per video':>14} {'ratio':>6}")
    for height, width in (SYNTHETIC_FRAME, (args.height, args.width)):
        h, w = -(-height // LATENT_STRIDE), -(-width // LATENT_STRIDE)
        for name, maps in map_sources(args.video_frames, args.channels, h, w, rng):
            for mode, (a, b, bpp_a, bpp_b) in header_per_frame_vs_video(maps, height * width).items():
                print(f"{width:>5}x{height:<4} {name:<26} {mode:<6} {a:>10.1f} {b:>10.1f} "
                      f"{bpp_a:>14.5f} {bpp_b:>14.5f} {b / a:>6.3f}")


# ------------------------------------------------------------------------- --constriction
def _constriction_stream():
    try:
        import constriction
    except ImportError as e:
        raise SystemExit("--constriction needs the constriction package: pip install constriction") from e
    return constriction.stream


class _Reads(list):
    """A count table that records its reads: the counts our coder used, bit by bit."""

    def __init__(self, counts):
        super().__init__(counts)
        self.reads = []

    def __getitem__(self, k):
        v = super().__getitem__(k)
        self.reads.append(v)
        return v


def our_probabilities(bits, prev, model):
    """P(bit = 1) that our coder uses for each bit, read off its count tables while it encodes
    (from a copy of ``model``): the reference the probabilities given to constriction must match."""
    spy = model.copy()
    spy.c0, spy.c1 = _Reads(spy.c0), _Reads(spy.c1)
    cabac_encode(bits, prev, spy, short_end=True)
    a, b = np.array(spy.c0.reads), np.array(spy.c1.reads)
    return b / (a + b)


def kt_probabilities(bits, prev, model):
    """P(bit = 1) of each bit of (T, C, h, w) ``bits`` under our context model, updating
    ``model`` in place: ``cabac_encode``'s contexts and count updates without its coder."""
    ref = _reference_states(bits, prev)
    top = np.zeros_like(ref)
    top[..., 1:, :] = bits[..., :-1, :]
    left = np.zeros_like(ref)
    left[..., :, 1:] = bits[..., :, :-1]
    chan = np.arange(bits.shape[1], dtype=np.int64)[None, :, None, None]
    c0, c1 = model.c0, model.c1
    p1 = []
    for bit, k in zip(bits.ravel().tolist(), (_context_base(chan, ref, top) + left).ravel().tolist()):
        a, b = c0[k], c1[k]
        p1.append(b / (a + b))
        if bit:  # the count update is inlined as in binary_coder: a call per bit would
            b += COUNT_STEP  # charge constriction's side with time ours does not spend
        else:
            a += COUNT_STEP
        if a + b > COUNT_LIMIT:
            a, b = (a + 1) >> 1, (b + 1) >> 1
        c0[k], c1[k] = a, b
    return np.array(p1)


def constriction_encode(bits, prev, model):
    """constriction's words as big-endian bytes: the words' trailing zero bytes, which the
    decoder restores as padding, then end the payload and can be dropped."""
    stream = _constriction_stream()
    enc = stream.queue.RangeEncoder()
    p1 = kt_probabilities(bits, prev, model)
    enc.encode(bits.ravel().astype(np.int32), stream.model.Bernoulli(perfect=False), p1)
    return enc.get_compressed().astype(">u4").tobytes()


def constriction_decode(payload, shape, prev, model):
    """Inverse of ``constriction_encode``, also without its trailing zero bytes. Bit by bit in
    ``cabac_decode``'s order: a bit's context needs the bits decoded before it."""
    stream = _constriction_stream()
    t, c, h, w = shape
    words = np.frombuffer(payload + bytes(-len(payload) % 4), dtype=">u4").astype(np.uint32)
    dec, bernoulli = stream.queue.RangeDecoder(words), stream.model.Bernoulli
    c0, c1 = model.c0, model.c1
    decoded = np.zeros(shape, dtype=np.uint8)
    zeros_row = np.zeros(w, dtype=np.int64)
    for ti in range(t):
        for ci in range(c):
            ref = _frame_reference(ti, ci, decoded, prev)
            plane = decoded[ti, ci]
            for r in range(h):
                top = plane[r - 1].astype(np.int64) if r else zeros_row
                base = _context_base(ci, ref[r], top).tolist()
                row = [0] * w
                left = 0
                for j in range(w):
                    k = base[j] + left
                    a, b = c0[k], c1[k]
                    left = dec.decode(bernoulli(b / (a + b), perfect=False))
                    if left:  # inlined, as above
                        b += COUNT_STEP
                    else:
                        a += COUNT_STEP
                    if a + b > COUNT_LIMIT:
                        a, b = (a + 1) >> 1, (b + 1) >> 1
                    c0[k], c1[k] = a, b
                    row[j] = left
                plane[r] = row
    return decoded


def _ours_encode(bits, prev, model):
    return cabac_encode(bits, prev, model, short_end=True)


def _ours_decode(payload, shape, prev, model):
    return cabac_decode(payload, shape, prev, model, short_end=True)


def compare_coders(maps, per_frame):
    """Sums over a video's (T, C, h, w) ``maps``, coded as per-frame records (probabilities
    carried over, previous frame as reference) or as one payload: ideal bits, bytes of ours,
    of constriction's words and of those without trailing zero bytes, and encode / decode
    seconds of both. CPU time, not wall time: other processes may share the cores."""
    units = [(m[None], p) for m, p in zip(maps, [None, *maps[:-1]])] if per_frame else [(maps, None)]
    models = {"ours": ContextModel(maps.shape[1]), "lib": ContextModel(maps.shape[1])}
    tot = dict.fromkeys(("ideal", "ours", "words", "lib", "enc ours", "dec ours", "enc lib", "dec lib"), 0.0)
    for bits, prev in units:
        # the ideal code length of our coder must be the one of constriction's probabilities:
        # compared bit by bit (the models carried from frame to frame are compared below)
        p1 = our_probabilities(bits, prev, models["ours"])
        if not np.array_equal(p1, kt_probabilities(bits, prev, models["lib"].copy())):
            raise RuntimeError("constriction would get other probabilities than our coder uses")
        tot["ideal"] += -np.log2(np.where(bits.ravel() == 1, p1, 1 - p1)).sum()
        for coder, encode, decode in (("ours", _ours_encode, _ours_decode),
                                      ("lib", constriction_encode, constriction_decode)):
            model = models[coder]
            start = model.copy()
            t0 = time.process_time()
            data = encode(bits, prev, model)
            t1 = time.process_time()
            if coder == "lib":  # the decoder gets the payload without its words' trailing zero bytes
                tot["words"] += len(data)
                data = data.rstrip(b"\0")
            t2 = time.process_time()
            out = decode(data, bits.shape, prev, start)
            t3 = time.process_time()
            if not np.array_equal(out, bits) or (start.c0, start.c1) != (model.c0, model.c1):
                raise RuntimeError(f"{coder}: round trip mismatch")
            tot[coder] += len(data)
            tot[f"enc {coder}"] += t1 - t0
            tot[f"dec {coder}"] += t3 - t2
        if (models["ours"].c0, models["ours"].c1) != (models["lib"].c0, models["lib"].c1):
            raise RuntimeError("the context models of ours and constriction diverged")
    return tot


def constriction_table(args, rng):
    _constriction_stream()  # fail before any work when it is missing
    print("\nour range coder vs constriction.stream.queue's (Bernoulli per bit), same maps and context model; "
          "payload B/frame: ideal sum(-log2 p) / 8, ours (short end), constriction's 32-bit words and, as lib, "
          "those without trailing zero bytes (what its decoder gets here); encode / decode CPU ms per frame")
    print(f"{'frame':>10} {'source':<26} {'coded as':<8} {'ideal':>7} {'ours':>7} {'words':>7} {'lib':>7} "
          f"{'lib/ours':>8} {'words/ours':>10} | {'enc ours':>8} {'enc lib':>7} {'ratio':>5} | "
          f"{'dec ours':>8} {'dec lib':>7} {'ratio':>5}")
    for (height, width), frames in ((SYNTHETIC_FRAME, args.video_frames), ((args.height, args.width), args.frames)):
        h, w = -(-height // LATENT_STRIDE), -(-width // LATENT_STRIDE)
        for name, maps in map_sources(frames, args.channels, h, w, rng):
            for per_frame in (True, False):
                s = {k: v / frames for k, v in compare_coders(maps, per_frame).items()}
                print(f"{width:>5}x{height:<4} {name:<26} {'records' if per_frame else 'video':<8} "
                      f"{s['ideal'] / 8:>7.2f} {s['ours']:>7.2f} {s['words']:>7.2f} {s['lib']:>7.2f} "
                      f"{s['lib'] / s['ours']:>8.3f} {s['words'] / s['ours']:>10.3f} | "
                      f"{s['enc ours'] * 1e3:>8.2f} {s['enc lib'] * 1e3:>7.2f} {s['enc lib'] / s['enc ours']:>5.2f} | "
                      f"{s['dec ours'] * 1e3:>8.2f} {s['dec lib'] * 1e3:>7.2f} {s['dec lib'] / s['dec ours']:>5.2f}")


def complexity(height, width):
    import torch
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from fvcore.nn import FlopCountAnalysis

    from vcm_d2.config import add_vcm_config
    from vcm_d2.modeling.cdre import (
        CDREEncoderSide,
        CrossAttentionEmbedding,
        DistortionDecoder,
        DistortionEmbedding,
        TokenDistortionDecoder,
        add_cdre_config,
    )

    cfg = get_cfg()
    add_vcm_config(cfg)
    add_cdre_config(cfg)
    r50 = {"res2": (64, 4), "res3": (256, 4), "res4": (512, 8), "res5": (1024, 16)}
    swin = {"res2": (96, 4), "res3": (192, 8), "res4": (384, 16), "res5": (768, 32)}
    side = CDREEncoderSide(cfg).eval()
    dec, tdec = DistortionDecoder(cfg).eval(), TokenDistortionDecoder(cfg).eval()
    emb = DistortionEmbedding(cfg, {k: ShapeSpec(channels=c, stride=s) for k, (c, s) in r50.items()}).eval()
    xemb = CrossAttentionEmbedding(cfg, {k: ShapeSpec(channels=c) for k, (c, _) in swin.items()}).eval()

    def sdpa_macs(inputs, outputs):
        # fvcore has no handle for fused attention: Q K^T and A V are B*heads*N*M*d MACs each.
        from fvcore.nn.jit_handles import get_shape

        b, heads, n, d = get_shape(inputs[0])
        m = get_shape(inputs[1])[2]
        return 2 * b * heads * n * m * d

    def macs(module, inputs):
        fc = FlopCountAnalysis(module, inputs)
        fc.set_op_handle("aten::scaled_dot_product_attention", sdpa_macs)
        fc.unsupported_ops_warnings(False)
        fc.uncalled_modules_warnings(False)
        return fc.total() / (height * width)

    def params(*modules):
        return sum(p.numel() for m in modules for p in m.parameters())

    class Embed(torch.nn.Module):
        """All stages of an embedding, with zero backbone features of the right shapes."""

        def __init__(self, embedding, shapes, tokens):
            super().__init__()
            self.embedding, self.shapes, self.tokens = embedding, shapes, tokens

        def forward(self, d):
            outs = []
            for name in self.embedding.stage_names:
                c, s = self.shapes[name]
                hh, ww = -(-height // s), -(-width // s)
                f = torch.zeros(1, hh * ww, c) if self.tokens else torch.zeros(1, c, hh, ww)
                f, d = self.embedding(name, f, d)
                outs.append(f)
            return outs

    x = torch.randn(1, 3, height, width)
    with torch.no_grad():
        y_hat = side(x, x + 0.1 * torch.randn_like(x)).y_hat
        d0 = dec(y_hat, (-(-height // 4), -(-width // 4)))
        t0 = tdec(y_hat)
    rows = [
        ("encoder side (extractor+encoder)", params(side), macs(side, (x, x))),
        ("  extractor (x and x_hat)", params(side.extractor), macs(side.extractor, (x, x))),
        ("CNN decoder", params(dec), macs(dec, (y_hat,))),
        ("CNN embedding, R50 stage inputs", params(emb), macs(Embed(emb, r50, False), (d0,))),
        ("Transformer decoder (tokens)", params(tdec), macs(tdec, (y_hat,))),
        ("Cross-attn embedding, Swin-T", params(xemb), macs(Embed(xemb, swin, True), (t0,))),
    ]
    print(f"\nCDRE complexity at {width}x{height} (MACs per input pixel, fvcore)")
    for name, p, m in rows:
        print(f"  {name:<34} params {p:>10,d}   MACs/pixel {m:>10,.1f}")
    print(f"  {'CNN version total':<34} params {params(side, dec, emb):>10,d}   (paper 1.9M)")
    print(f"  {'Transformer version total':<34} params {params(side, tdec, xemb):>10,d}   (paper 3.7M)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=30, help="frames per sequence")
    parser.add_argument("--height", type=int, default=720, help="frame height in pixels")
    parser.add_argument("--width", type=int, default=1280, help="frame width in pixels")
    parser.add_argument("--channels", type=int, default=6, help="latent channels")
    parser.add_argument("--fps", type=float, default=30.0, help="frame rate for KB/s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--video-frames", type=int, default=12, help="frames per video of the header comparison")
    parser.add_argument("--complexity", action="store_true", help="also report params / MACs")
    parser.add_argument("--constriction", action="store_true",
                        help="also compare our range coder with constriction's (pip install constriction)")
    args = parser.parse_args()
    h, w = -(-args.height // LATENT_STRIDE), -(-args.width // LATENT_STRIDE)
    rng = np.random.default_rng(args.seed)
    print(f"side stream: {args.frames} frames of {args.channels}x{h}x{w} bits ({args.width}x{args.height})")
    for name, maps in map_sources(args.frames, args.channels, h, w, rng):
        bench_maps(name, maps, args.fps)
    video_table(args, rng)
    if args.constriction:
        constriction_table(args, rng)
    if args.complexity:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            complexity(args.height, args.width)


if __name__ == "__main__":
    main()
