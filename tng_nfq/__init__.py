"""tng_nfq: a Trusted Network Gateway speaking TNG's configuration language and rats-tls wire format."""

__version__ = "0.1.0"
