"""Loopback throughput benchmark: direct vs stunnel vs upstream TNG vs tng_nfq.

Run as ``python -m bench`` (root needed: everything runs inside a throw-away
network namespace). See bench/README.md.
"""

PEER_NAMES = ("direct", "stunnel", "upstream-tng", "tng_nfq")
BASELINE = "direct"
HEADLINE = ("tng_nfq", "upstream-tng")  # numerator, denominator of the headline ratio
