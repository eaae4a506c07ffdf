"""The SCRAM server against scramp's client (no network): plain and -PLUS, libpq's empty user
name, wrong proofs, channel-binding downgrades, and tls-server-end-point hashing."""

from __future__ import annotations

import hashlib

import pytest
import scramp

from ithaca.auth.scram import SCRAM, SCRAM_PLUS, ScramFailed, ScramServer, certificate_binding_hash

INFO = scramp.ScramMechanism().make_auth_info("pencil", 4096, b"0123456789abcdef")
CB = hashlib.sha256(b"our certificate").digest()


def run(client: scramp.ScramClient, mechanism: str, binding: bytes | None,
        first_override: str | None = None) -> None:
    server = ScramServer(*INFO, channel_binding=binding)
    first = first_override or client.get_client_first()
    client.set_server_first(server.server_first(mechanism, first))
    client.set_server_final(server.server_final(client.get_client_final()))


def test_plain_and_plus() -> None:
    run(scramp.ScramClient([SCRAM], "user", "pencil"), SCRAM, None)
    run(scramp.ScramClient([SCRAM], "user", "pencil"), SCRAM, CB)  # 'n' is fine with TLS
    plus = scramp.ScramClient([SCRAM_PLUS], "user", "pencil",
                              channel_binding=("tls-server-end-point", CB))
    run(plus, SCRAM_PLUS, CB)


def test_wrong_password_and_binding() -> None:
    with pytest.raises(ScramFailed, match="proof"):
        run(scramp.ScramClient([SCRAM], "user", "pen"), SCRAM, None)
    other = scramp.ScramClient([SCRAM_PLUS], "user", "pencil",
                               channel_binding=("tls-server-end-point", b"x" * 32))
    with pytest.raises(ScramFailed, match="channel binding"):
        run(other, SCRAM_PLUS, CB)


def test_libpq_empty_user_name() -> None:
    """libpq sends "n=," and a proof over that bare message; compute it by hand."""
    import base64
    import hmac

    server = ScramServer(*INFO)
    bare = "n=,r=abcdefghijkl"
    server_first = server.server_first(SCRAM, "n,," + bare)
    nonce = server_first.split(",")[0][2:]
    without_proof = f"c=biws,r={nonce}"
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", INFO[0], 4096)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    signature = hmac.digest(stored_key, f"{bare},{server_first},{without_proof}".encode(),
                            "sha256")
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    final = server.server_final(f"{without_proof},p={base64.b64encode(proof).decode()}")
    assert final.startswith("v=")


def test_downgrade_and_malformed() -> None:
    server = ScramServer(*INFO, channel_binding=CB)
    with pytest.raises(ScramFailed, match="downgrade"):
        server.server_first(SCRAM, "y,,n=,r=abc")
    with pytest.raises(ScramFailed):
        ScramServer(*INFO).server_first(SCRAM_PLUS, "p=tls-server-end-point,,n=,r=abc")
    for bad in ("", "n,,", "n,a=admin,n=,r=x", "n,,r=x", "n,,n=,r=", "n,,n=,r=a,m=ext"):
        with pytest.raises(ScramFailed):
            ScramServer(*INFO).server_first(SCRAM, bad)


def test_certificate_binding_hash() -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    def cert(key, algorithm):
        name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "t")])
        now = datetime.datetime.now(datetime.UTC)
        return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(1).not_valid_before(now)
                .not_valid_after(now + datetime.timedelta(days=1)).sign(key, algorithm)
                .public_bytes(serialization.Encoding.DER))

    key = ec.generate_private_key(ec.SECP256R1())
    der256 = cert(key, hashes.SHA256())
    der384 = cert(key, hashes.SHA384())
    assert certificate_binding_hash(der256) == hashlib.sha256(der256).digest()
    assert certificate_binding_hash(der384) == hashlib.sha384(der384).digest()
    assert certificate_binding_hash(cert(ed25519.Ed25519PrivateKey.generate(), None)) is None
    assert certificate_binding_hash(b"\x30\x03garbage") is None
