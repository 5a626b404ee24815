# Gateway: routes between the client and server networks (nothing of tng-nfq
# in the path), runs the sample Attestation Service the client's verifier
# asks, and captures the wire toward the server.
sample_as
capture_start 8080
