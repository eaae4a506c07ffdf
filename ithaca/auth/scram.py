"""The server side of SCRAM-SHA-256 and SCRAM-SHA-256-PLUS (RFC 5802, 7677, 5929
tls-server-end-point), sans-IO: strings in, strings out. libpq sends an empty user name ("n=,")
and relies on the startup packet's user, so this accepts what PostgreSQL accepts."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

SCRAM = "SCRAM-SHA-256"
SCRAM_PLUS = "SCRAM-SHA-256-PLUS"
CHANNEL_BINDING_TYPE = "tls-server-end-point"


class ScramFailed(Exception):
    """The exchange failed: bad message, channel binding mismatch or wrong proof."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise ScramFailed("invalid base64 in SCRAM message") from None


def _attributes(message: str) -> list[tuple[str, str]]:
    pairs = []
    for part in message.split(","):
        if len(part) < 2 or part[1] != "=":
            raise ScramFailed(f"malformed SCRAM attribute {part[:16]!r}")
        pairs.append((part[0], part[2:]))
    return pairs


class ScramServer:
    """One exchange: `server_first(mechanism, client_first)`, then `server_final(client_final)`.
    `channel_binding` is the tls-server-end-point hash of our certificate when the connection
    is TLS and -PLUS was offered, else None."""

    def __init__(self, salt: bytes, stored_key: bytes, server_key: bytes, iterations: int,
                 channel_binding: bytes | None = None) -> None:
        self._salt = salt
        self._stored_key = stored_key
        self._server_key = server_key
        self._iterations = iterations
        self._cb_data = channel_binding
        self._gs2_header = ""
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""

    def server_first(self, mechanism: str, client_first: str) -> str:
        try:
            flag, authzid, bare = client_first.split(",", 2)
        except ValueError:
            raise ScramFailed("malformed SCRAM client-first message") from None
        if authzid:
            raise ScramFailed("SCRAM authorization identities are not supported")
        if mechanism == SCRAM_PLUS:
            if flag != f"p={CHANNEL_BINDING_TYPE}" or self._cb_data is None:
                raise ScramFailed("SCRAM-SHA-256-PLUS needs tls-server-end-point binding")
        elif flag == "y":
            if self._cb_data is not None:  # we offered -PLUS: a 'y' client was downgraded
                raise ScramFailed("SCRAM channel binding downgrade detected")
        elif flag != "n":
            raise ScramFailed("SCRAM channel binding flag does not match the mechanism")
        attrs = _attributes(bare)
        if len(attrs) < 2 or attrs[0][0] != "n" or attrs[1][0] != "r" or not attrs[1][1]:
            raise ScramFailed("malformed SCRAM client-first-bare message")
        if any(key == "m" for key, _ in attrs):
            raise ScramFailed("SCRAM extensions are not supported")
        client_nonce = attrs[1][1]
        if any(not (0x21 <= ord(ch) <= 0x7E) or ch == "," for ch in client_nonce):
            raise ScramFailed("invalid SCRAM client nonce")
        self._gs2_header = f"{flag},{authzid},"
        self._client_first_bare = bare
        self._nonce = client_nonce + _b64(os.urandom(18))
        self._server_first = f"r={self._nonce},s={_b64(self._salt)},i={self._iterations}"
        return self._server_first

    def server_final(self, client_final: str) -> str:
        """Check the client's proof; return the server-final message ("v=...")."""
        head, sep, proof_text = client_final.rpartition(",p=")
        if not sep:
            raise ScramFailed("SCRAM client-final message has no proof")
        attrs = _attributes(head)
        if len(attrs) < 2 or attrs[0][0] != "c" or attrs[1][0] != "r":
            raise ScramFailed("malformed SCRAM client-final message")
        binding = self._gs2_header.encode("ascii")
        if self._gs2_header.startswith("p="):
            assert self._cb_data is not None
            binding += self._cb_data
        if not hmac.compare_digest(_unb64(attrs[0][1]), binding):
            raise ScramFailed("SCRAM channel binding does not match")
        if attrs[1][1] != self._nonce:
            raise ScramFailed("SCRAM nonce does not match")
        proof = _unb64(proof_text)
        auth_message = f"{self._client_first_bare},{self._server_first},{head}".encode()
        client_signature = hmac.digest(self._stored_key, auth_message, "sha256")
        if len(proof) != len(client_signature):
            raise ScramFailed("SCRAM proof has the wrong length")
        client_key = bytes(a ^ b for a, b in zip(proof, client_signature, strict=True))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), self._stored_key):
            raise ScramFailed("SCRAM proof is wrong")
        return "v=" + _b64(hmac.digest(self._server_key, auth_message, "sha256"))


# -- tls-server-end-point: the hash of our certificate, by its signature's hash (RFC 5929 4.1) --

def _oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    body = bytearray([parts[0] * 40 + parts[1]])
    for value in parts[2:]:
        chunk = [value & 0x7F]
        value >>= 7
        while value:
            chunk.append(0x80 | (value & 0x7F))
            value >>= 7
        body += bytes(reversed(chunk))
    return bytes(body)


_SIGNATURE_HASHES = {
    _oid("1.2.840.113549.1.1.4"): "sha256",  # md5WithRSA: md5 and sha1 become sha256
    _oid("1.2.840.113549.1.1.5"): "sha256",  # sha1WithRSA
    _oid("1.2.840.113549.1.1.14"): "sha224",
    _oid("1.2.840.113549.1.1.11"): "sha256",
    _oid("1.2.840.113549.1.1.12"): "sha384",
    _oid("1.2.840.113549.1.1.13"): "sha512",
    _oid("1.2.840.10045.4.1"): "sha256",  # ecdsa-with-SHA1
    _oid("1.2.840.10045.4.3.1"): "sha224",
    _oid("1.2.840.10045.4.3.2"): "sha256",
    _oid("1.2.840.10045.4.3.3"): "sha384",
    _oid("1.2.840.10045.4.3.4"): "sha512",
}


def _der_item(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER item at pos."""
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[pos:pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise ValueError("truncated DER")
    return tag, pos, pos + length


def certificate_binding_hash(der: bytes) -> bytes | None:
    """tls-server-end-point data for a DER certificate; None for signature algorithms without
    a defined hash (Ed25519, RSASSA-PSS), where -PLUS is then not offered, as in PostgreSQL."""
    try:
        _tag, content, _end = _der_item(der, 0)  # Certificate SEQUENCE
        _tag, _start, tbs_end = _der_item(der, content)  # tbsCertificate
        _tag, alg_start, _alg_end = _der_item(der, tbs_end)  # signatureAlgorithm SEQUENCE
        tag, oid_start, oid_end = _der_item(der, alg_start)
    except (IndexError, ValueError):
        return None
    if tag != 0x06:
        return None
    name = _SIGNATURE_HASHES.get(der[oid_start:oid_end])
    return hashlib.new(name, der).digest() if name else None
