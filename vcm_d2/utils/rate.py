"""The two names under which bits travel through vcm_d2, from pair-dataset records and model
outputs to ``RateTaskEvaluator``, the figures and the predictors."""

__all__ = ["BITS", "RATE_KEYS", "SIDE_BITS"]

# Bits of the coded frame: the pixel codec's (a pair-dataset record, its manifest entry) or the
# model's own stream (TransVFC outputs; per frame, headers and I-frames included).
BITS = "bits"
# Bits of a side stream sent next to the codec's (CDRE's distortion representation); counted in
# bpp on top of BITS.
SIDE_BITS = "side_bits"
RATE_KEYS = (BITS, SIDE_BITS)
