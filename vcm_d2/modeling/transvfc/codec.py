"""TransVFC video feature codec (Sec. 3.1-3.2, Fig. 4a): res2 features in, res2 features out.

Per frame t of a GOP (all tensors NCHW, res2 = 256 ch at 1/4 of the image):

1. pad F_t to a multiple of ``pad_multiple`` (replicate), reduce channels: f_t = R(F_t);
2. I-frame (first of each GOP): intra hyperprior codec -> f^_t;
   P-frame: scheme-based inter-prediction (eq. 1) from the DECODED previous f^_{t-1} -> f~_t,
   then perception-guided conditional coding (eq. 3) with C_enc = PN(F_t) and
   C_dec = PN(R^-1(f~_t)) -> f^_t;
3. F^_t = R^-1(f^_t), cropped back to the input size. f^_t (padded) is the next reference.

``pad_multiple`` is the least common multiple of every path's total downsampling at the
feature level (latent stride 4 x hyper-latent stride 4 = 16, i.e. 64 image pixels), so any
feature size can be coded; the padding is cropped away after restoration and the record
stores the unpadded size.

Entropy coding runs on CPU with CompressAI's rANS coder. The encoder reconstructs exactly
what the decoder will (it returns the decoder's y_hat = symbols + means and runs the same
decoder-side modules on the same inputs), so ``decompress(compress(x))`` equals the encoder's
reconstruction bit for bit on the same machine and library build with the same number of
torch threads (CPU convolutions split their reductions by thread: 1 vs 2 threads differ by
~1e-8, which can flip a Gaussian scale index and desynchronise decoding). The perception
network must be deterministic too (a frozen detectron2 FPN in eval mode is).

Record of one coded frame (the container format is built on top of this)::

    {"type": "I" | "P",
     "strings": [[bytes per batch item] per latent]   # order: RECORD_STRINGS[type]
     "shape": (H, W)}                                 # unpadded feature size
"""
import math
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from compressai.models import CompressionModel
from detectron2.config import configurable
from torch import Tensor

from .channel import ChannelReduction, ChannelRestoration
from .conditional_coding import CONDITION_LEVELS, ConditionalCoding
from .entropy import HYPER_DOWNSAMPLING, QUANTIZATION_MODES
from .inter_prediction import InterPrediction
from .intra import IntraCodec
from .layers import crop_to, lcm_all, pad_to_multiple, padded_size

__all__ = [
    "TransVFCCodec",
    "PerceptionFn",
    "LIKELIHOOD_KEYS",
    "RECORD_STRINGS",
    "PERCEPTION_LEVELS",
    "record_num_bits",
]

PerceptionFn = Callable[[Tensor], Mapping[str, Tensor]]
PERCEPTION_LEVELS = tuple(name for stage in CONDITION_LEVELS for name in stage)  # p2..p6
LIKELIHOOD_KEYS = ("i_y", "i_z", "m_y", "m_z", "r_y", "r_z")
# Latents stored in a record's "strings", in order, per frame type.
RECORD_STRINGS = {"I": ("i_y", "i_z"), "P": ("m_y", "m_z", "r_y", "r_z")}
FRAME_TYPES = tuple(RECORD_STRINGS)


def check_record_strings(record: Mapping) -> Tuple[str, List]:
    """Frame type and latent string lists of a codec record, checked against RECORD_STRINGS
    (shared by the codec and the container)."""
    ftype = record.get("type")
    if ftype not in RECORD_STRINGS:
        raise ValueError(f"record type must be one of {FRAME_TYPES}, got {ftype!r}")
    strings = list(record["strings"])
    if len(strings) != len(RECORD_STRINGS[ftype]):
        raise ValueError(f"a {ftype}-frame record holds {len(RECORD_STRINGS[ftype])} latents "
                         f"(string lists), got {len(strings)}")
    return ftype, strings
BITS_PER_BYTE = 8


def record_num_bits(record: Mapping) -> int:
    """Bits of all entropy-coded strings of one frame record (all batch items)."""
    return BITS_PER_BYTE * sum(len(s) for latent in record["strings"] for s in latent)


class TransVFCCodec(CompressionModel):
    """Video feature codec of TransVFC. Build from a config (``cfg.MODEL.VCM.TRANSVFC``) or
    with keyword arguments (defaults = the config defaults).

    Public API:
        forward(features, perception) -> training/estimation dict (see ``forward``)
        compress(features, perception) -> (records, decoded features)
        decompress(records, perception) -> decoded features
        compress_frame / decompress_frame: one frame at a time with an explicit reference
        update(force=True), aux_loss() (from ``CompressionModel``)
        pad_multiple, latent_shapes(h, w), frame_type(index)
    """

    @configurable
    def __init__(self, *, in_channels: int = 256, feature_stride: int = 4,
                 reduced_channels: int = 64, reduction_res_blocks: int = 2,
                 motion_estimation_channels: int = 64, motion_channels: int = 64,
                 motion_latent_channels: int = 64, hyper_channels: int = 64,
                 hidden_channels: int = 128, num_schemes: int = 16,
                 scheme_expansions: Sequence[int] = (4, 4), scheme_combine_kernel: int = 7,
                 scheme_combine: str = "dense",
                 residual_latent_channels: int = 96, intra_latent_channels: int = 96,
                 condition_channels: int = 32, perception_channels: int = 256,
                 temporal_prior_channels: int = 192, entropy_parameter_channels: int = 256,
                 gop: int = 12, train_quantization: str = "ste", detach_reference: bool = False,
                 use_scheme_prediction: bool = True, use_perception_condition: bool = True):
        super().__init__()
        if gop < 1:
            raise ValueError(f"GOP must be >= 1, got {gop}")
        if train_quantization not in QUANTIZATION_MODES:
            raise ValueError(f"TRAIN_QUANTIZATION must be one of {QUANTIZATION_MODES}, "
                             f"got {train_quantization!r}")
        if use_scheme_prediction and math.prod(scheme_expansions) != num_schemes:
            raise ValueError(f"SCHEME_EXPANSIONS {list(scheme_expansions)} multiply to "
                             f"{math.prod(scheme_expansions)}, not NUM_SCHEMES={num_schemes}")
        self.in_channels = in_channels
        self.feature_stride = feature_stride
        self.gop = gop
        self.train_quantization = train_quantization
        self.detach_reference = detach_reference
        self.use_perception_condition = use_perception_condition

        self.channel_reduction = ChannelReduction(in_channels, reduced_channels,
                                                  reduction_res_blocks)
        self.channel_restoration = ChannelRestoration(reduced_channels, in_channels,
                                                      reduction_res_blocks)
        self.intra = IntraCodec(reduced_channels, hidden_channels, intra_latent_channels,
                                hyper_channels)
        self.inter_prediction = InterPrediction(
            feat_ch=reduced_channels, me_width=motion_estimation_channels,
            motion_ch=motion_channels, latent_ch=motion_latent_channels,
            hyper_ch=hyper_channels, width=hidden_channels,
            use_schemes=use_scheme_prediction, expansions=scheme_expansions,
            combine_kernel=scheme_combine_kernel, combine=scheme_combine)
        self.conditional_coding = ConditionalCoding(
            feat_ch=reduced_channels, width=hidden_channels,
            latent_ch=residual_latent_channels, hyper_ch=hyper_channels,
            perception_ch=perception_channels, cond_ch=condition_channels,
            prior_ch=temporal_prior_channels, param_ch=entropy_parameter_channels,
            use_conditions=use_perception_condition)

    @classmethod
    def from_config(cls, cfg):
        T = cfg.MODEL.VCM.TRANSVFC
        return {
            "in_channels": T.IN_CHANNELS,
            "feature_stride": T.FEATURE_STRIDE,
            "reduced_channels": T.REDUCED_CHANNELS,
            "reduction_res_blocks": T.REDUCTION_RES_BLOCKS,
            "motion_estimation_channels": T.MOTION_ESTIMATION_CHANNELS,
            "motion_channels": T.MOTION_CHANNELS,
            "motion_latent_channels": T.MOTION_LATENT_CHANNELS,
            "hyper_channels": T.HYPER_CHANNELS,
            "hidden_channels": T.HIDDEN_CHANNELS,
            "num_schemes": T.NUM_SCHEMES,
            "scheme_expansions": tuple(T.SCHEME_EXPANSIONS),
            "scheme_combine_kernel": T.SCHEME_COMBINE_KERNEL,
            "scheme_combine": T.SCHEME_COMBINE,
            "residual_latent_channels": T.RESIDUAL_LATENT_CHANNELS,
            "intra_latent_channels": T.INTRA_LATENT_CHANNELS,
            "condition_channels": T.CONDITION_CHANNELS,
            "perception_channels": T.PERCEPTION_CHANNELS,
            "temporal_prior_channels": T.TEMPORAL_PRIOR_CHANNELS,
            "entropy_parameter_channels": T.ENTROPY_PARAMETER_CHANNELS,
            "gop": T.GOP,
            "train_quantization": T.TRAIN_QUANTIZATION,
            "detach_reference": T.DETACH_REFERENCE,
            "use_scheme_prediction": T.USE_SCHEME_PREDICTION,
            "use_perception_condition": T.USE_PERCEPTION_CONDITION,
        }

    # ------------------------------------------------------------------ geometry
    @property
    def pad_multiple(self) -> int:
        """Features are padded to a multiple of this (feature pixels) inside the codec."""
        return lcm_all([
            self.intra.downsampling,
            self.inter_prediction.downsampling,
            self.conditional_coding.downsampling,
        ])

    def latent_shapes(self, h: int, w: int) -> Dict[str, Tuple[int, int]]:
        """Spatial size of every latent for an (unpadded) ``h x w`` feature."""
        ph, pw = padded_size(h, w, self.pad_multiple)
        y_i = self.intra.latent_downsampling
        y_m = self.inter_prediction.latent_downsampling
        y_r = self.conditional_coding.latent_downsampling
        out = {}
        for key, stride in (("i", y_i), ("m", y_m), ("r", y_r)):
            out[f"{key}_y"] = (ph // stride, pw // stride)
            out[f"{key}_z"] = (ph // (stride * HYPER_DOWNSAMPLING),
                               pw // (stride * HYPER_DOWNSAMPLING))
        return out

    def frame_type(self, index: int) -> str:
        """"I" for the first frame of each GOP, else "P"."""
        return "I" if index % self.gop == 0 else "P"

    def num_image_pixels(self, h: int, w: int) -> int:
        """Image pixels represented by an unpadded ``h x w`` feature (for bits/pixel)."""
        return h * self.feature_stride * w * self.feature_stride

    # ------------------------------------------------------------------ helpers
    def _check_feature(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"expected an N x {self.in_channels} x H x W feature, got {shape}")

    def _check_sequence(self, features: Sequence[Tensor]) -> None:
        if not isinstance(features, (list, tuple)) or not features:
            raise ValueError("features must be a non-empty list of NCHW tensors")
        for x in features:
            self._check_feature(x)
        if any(x.shape != features[0].shape for x in features):
            raise ValueError(f"all features must share one shape, got "
                             f"{sorted({tuple(x.shape) for x in features})}")

    def _perceive(self, perception: Optional[PerceptionFn], x: Tensor):
        """PN(x) on a padded 256-ch feature, or None when conditions are disabled."""
        if not self.use_perception_condition:
            return None
        if perception is None:
            raise ValueError("USE_PERCEPTION_CONDITION is on: a perception callable is required")
        pyramid = perception(x)
        if not isinstance(pyramid, Mapping):
            raise ValueError(f"perception must return a dict of p2..p6, got {type(pyramid)}")
        return pyramid

    def _decoder_conditions(self, perception, f_tilde: Tensor):
        """C_dec source: PN of the restored compensated feature (available to the decoder)."""
        if not self.use_perception_condition:
            return None
        return self._perceive(perception, self.channel_restoration(f_tilde))

    # ------------------------------------------------------------------ training
    def forward(self, features: Sequence[Tensor], perception: Optional[PerceptionFn] = None):
        """Code a GOP (or several: an I-frame every ``gop`` frames) with noise/STE quantization.

        Args:
            features: list of T res2 features, each N x 256 x H x W (same shape).
            perception: res2 -> {"p2".."p6"} (frozen FPN); needed if conditions are enabled.

        Returns a dict:
            "f_hat": T reconstructed features (N x 256 x H x W);
            "likelihoods": {"i_y","i_z","m_y","m_z","r_y","r_z"} -> list of likelihood
                tensors, one per frame of that type (I: i_*, P: m_* and r_*);
            "compensated": T entries, R^-1(f~_t) cropped (N x 256 x H x W), None for I-frames;
            "conditions": T entries, {"enc": PN(F_t), "dec": PN(R^-1(f~_t))} on the padded
                features, None for I-frames or without conditions;
            "frame_types": T of "I"/"P"; "num_pixels": image pixels of one frame.
        """
        self._check_sequence(features)
        size = tuple(features[0].shape[-2:])
        quant = self.train_quantization
        out = {"f_hat": [], "likelihoods": {k: [] for k in LIKELIHOOD_KEYS},
               "compensated": [], "conditions": [], "frame_types": [],
               "num_pixels": self.num_image_pixels(*size)}
        reference = None
        for t, feature in enumerate(features):
            x = pad_to_multiple(feature, self.pad_multiple)
            f_t = self.channel_reduction(x)
            ftype = self.frame_type(t)
            if ftype == "I":
                f_hat, lik = self.intra(f_t, quant)
                out["likelihoods"]["i_y"].append(lik["y"])
                out["likelihoods"]["i_z"].append(lik["z"])
                out["compensated"].append(None)
                out["conditions"].append(None)
            else:
                f_tilde, m_lik = self.inter_prediction(f_t, reference, quant)
                restored_tilde = self.channel_restoration(f_tilde)
                pyr_enc = self._perceive(perception, x)
                pyr_dec = self._perceive(perception, restored_tilde)
                f_hat, r_lik = self.conditional_coding(f_t, f_tilde, pyr_enc, pyr_dec, quant)
                for prefix, lik in (("m", m_lik), ("r", r_lik)):
                    out["likelihoods"][f"{prefix}_y"].append(lik["y"])
                    out["likelihoods"][f"{prefix}_z"].append(lik["z"])
                out["compensated"].append(crop_to(restored_tilde, size))
                out["conditions"].append(
                    None if pyr_enc is None else {"enc": pyr_enc, "dec": pyr_dec})
            out["frame_types"].append(ftype)
            out["f_hat"].append(crop_to(self.channel_restoration(f_hat), size))
            reference = f_hat.detach() if self.detach_reference else f_hat
        return out

    # ------------------------------------------------------------------ entropy coding
    @torch.no_grad()
    def compress_frame(self, feature: Tensor, perception: Optional[PerceptionFn] = None,
                       reference: Optional[Tensor] = None, restore: bool = True
                       ) -> Tuple[dict, Optional[Tensor], Tensor]:
        """Code one frame: an I-frame if ``reference`` is None, else a P-frame.

        Returns (record, decoded N x 256 x H x W feature, new reference). The reference is the
        decoder's padded reduced feature f^_t; pass it to the next call. ``restore=False``: an
        encoder that only writes the stream skips the channel restoration R^-1(f^_t) (the next
        frame predicts from f^_t) and gets None as the decoded feature."""
        self._check_feature(feature)
        size = tuple(feature.shape[-2:])
        x = pad_to_multiple(feature, self.pad_multiple)
        f_t = self.channel_reduction(x)
        if reference is None:
            strings, f_hat = self.intra.compress(f_t)
            ftype = "I"
        else:
            self._check_reference(reference, x)
            m_strings, f_tilde = self.inter_prediction.compress(f_t, reference)
            pyr_enc = self._perceive(perception, x)
            pyr_dec = self._decoder_conditions(perception, f_tilde)
            r_strings, f_hat = self.conditional_coding.compress(f_t, f_tilde, pyr_enc, pyr_dec)
            strings = m_strings + r_strings
            ftype = "P"
        record = {"type": ftype, "strings": strings, "shape": size}
        decoded = crop_to(self.channel_restoration(f_hat), size) if restore else None
        return record, decoded, f_hat

    @torch.no_grad()
    def decompress_frame(self, record: Mapping, perception: Optional[PerceptionFn] = None,
                         reference: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Decode one record; returns (N x 256 x H x W feature, new reference)."""
        ftype, strings, size = self._check_record(record)
        padded = padded_size(*size, self.pad_multiple)
        if ftype == "I":
            f_hat = self.intra.decompress(strings, padded)
        else:
            if reference is None:
                raise ValueError("a P-frame record needs the previous decoded reference")
            if tuple(reference.shape[-2:]) != padded:
                raise ValueError(f"reference size {tuple(reference.shape[-2:])} does not match "
                                 f"the record's padded size {padded}")
            n_m = len(RECORD_STRINGS["P"]) // 2
            f_tilde = self.inter_prediction.decompress(strings[:n_m], reference)
            pyr_dec = self._decoder_conditions(perception, f_tilde)
            f_hat = self.conditional_coding.decompress(strings[n_m:], f_tilde, pyr_dec)
        return crop_to(self.channel_restoration(f_hat), size), f_hat

    def compress(self, features: Sequence[Tensor], perception: Optional[PerceptionFn] = None
                 ) -> Tuple[List[dict], List[Tensor]]:
        """Code a sequence (I-frame every ``gop`` frames). Returns (records, decoded features);
        the decoded features are exactly what ``decompress(records)`` returns."""
        self._check_sequence(features)
        records, decoded, reference = [], [], None
        for t, feature in enumerate(features):
            ref = None if self.frame_type(t) == "I" else reference
            record, feature_hat, reference = self.compress_frame(feature, perception, ref)
            records.append(record)
            decoded.append(feature_hat)
        return records, decoded

    def decompress(self, records: Sequence[Mapping],
                   perception: Optional[PerceptionFn] = None) -> List[Tensor]:
        """Decode the records of ``compress`` in order (the P-frame chain needs all of them)."""
        decoded, reference = [], None
        for record in records:
            feature_hat, reference = self.decompress_frame(record, perception, reference)
            decoded.append(feature_hat)
        return decoded

    # ------------------------------------------------------------------ validation
    def _check_reference(self, reference: Tensor, x: Tensor) -> None:
        if reference.dim() != 4 or reference.shape[0] != x.shape[0] or \
                reference.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"reference of shape {tuple(reference.shape)} does not match the "
                             f"padded feature {tuple(x.shape)}")

    @staticmethod
    def _check_record(record: Mapping):
        if not isinstance(record, Mapping) or not {"type", "strings", "shape"} <= set(record):
            raise ValueError("a record needs 'type', 'strings' and 'shape'")
        ftype, strings = check_record_strings(record)
        size = tuple(int(v) for v in record["shape"])
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"record shape must be (H, W), got {record['shape']}")
        return ftype, strings, size
