"""Oblivious HTTP codecs, sans-io: HPKE (RFC 9180), key configurations and
encapsulation (RFC 9458), Binary HTTP (RFC 9292) and the chunked variant
(draft-ietf-ohai-chunked-ohttp) that upstream tng carries HTTP in.

Nothing here touches a socket: encoders return bytes, decoders are fed bytes.
Every decoder reports bad input as `OhttpError` and nothing else, so callers
can catch one type at the trust boundary.
"""

from tng_nfq.http.ohttp.errors import OhttpError

__all__ = ["OhttpError"]
