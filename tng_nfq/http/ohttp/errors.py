"""The one exception type for everything that goes wrong in the OHTTP codecs."""

from __future__ import annotations


class OhttpError(ValueError):
    """Malformed, truncated, tampered or unsupported OHTTP/BHTTP/HPKE input.

    A ValueError so code that already treats bad peer input as ValueError keeps
    working; the codecs never let any other exception type escape on bad input.
    """
