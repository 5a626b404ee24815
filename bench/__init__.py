"""Loopback benchmarks: direct vs stunnel vs upstream TNG vs tng_nfq.

Suites: `throughput` (iperf3 bulk TCP), `connrate` (new connections
per second, each carrying one short request/response, with and without
remote attestation) and `netfilter` (a netfilter-captured tng-nfq tunnel
vs the same tunnel in mapping mode, the classifier's cost; opt-in) and `encap` (HTTP
encapsulation: download, upload and keep-alive request rate; opt-in). Run as ``python -m bench`` (root needed: everything
runs inside a throw-away network namespace). See bench/README.md.
"""

PEER_NAMES = ("direct", "stunnel", "upstream-tng", "tng_nfq")
BASELINE = "direct"
HEADLINE = ("tng_nfq", "upstream-tng")  # numerator, denominator of the headline ratio

SUITES = ("throughput", "connrate", "netfilter", "encap")
# netfilter (two namespaces, ~3 min with 3 reps) and encap (HTTP encapsulation, ~2 min) are not in the
# default run: --suites netfilter / --suites encap
DEFAULT_SUITES = ("throughput", "connrate")
# connrate variants "<peer>:<ra>"; ra "attest" = egress attest + ingress verify (one-way)
CONNRATE_PEER_NAMES = ("direct", "upstream-tng:attest", "tng_nfq:attest", "upstream-tng:no_ra", "tng_nfq:no_ra")
CONNRATE_HEADLINES = {"attest": ("tng_nfq:attest", "upstream-tng:attest"),
                      "no_ra": ("tng_nfq:no_ra", "upstream-tng:no_ra")}
