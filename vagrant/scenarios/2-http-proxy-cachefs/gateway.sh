# Gateway: plain router; the sample Attestation Service both verifiers ask;
# a capture of the cachefs port on the wire toward the server.
sample_as
capture_start 9991
