"""Remote attestation: tokens, Attestation Agent and Attestation Service clients, sample-TEE dev servers."""
