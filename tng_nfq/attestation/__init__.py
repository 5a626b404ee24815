"""Remote attestation: evidence in certificates, the CoCo Attestation Agent
(ttrpc) and Attestation Service clients, token checks and the sample-TEE
development servers."""
