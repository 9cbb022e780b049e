"""The HTTP fetcher of imports against real servers on loopback addresses.

Every server is started by the test on 127.0.0.x and counts the connections it accepts; a
refused address must see none. Host names are resolved by a resolver the test controls, so
"resolved once, connected to the checked address" is observable.
"""

import datetime
import gzip
import ipaddress
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ports.fetcher import FetchFailed, UrlRefused
from schemas.domain.addresses import IPAddress, parse_networks
from services.adapters.http_fetcher import HttpUrlFetcher
from tests.fixtures.http_servers import Served, body, redirect, serve

CSV = b"city,temperature\nOslo,3.5\nLima,19.25\nCairo,22.0\n"
LOOPBACK_ONE = parse_networks("127.0.0.1/32")


def fetcher(**kwargs: object) -> HttpUrlFetcher:
    options: dict[str, object] = {
        "connect_timeout_s": 2.0,
        "read_timeout_s": 2.0,
        **kwargs,
    }
    return HttpUrlFetcher(LOOPBACK_ONE, **options)  # type: ignore[arg-type]


class Resolver:
    """Answers from a table, counting the lookups; nothing reaches the system's resolver."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = [[ipaddress.ip_address(a) for a in answer] for answer in answers]
        self.calls: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.calls.append((host, port))
        return self.answers[min(len(self.calls), len(self.answers)) - 1]


@pytest.fixture
def origin() -> Iterator[Served]:
    with serve("127.0.0.1") as served:
        served.routes["/weather.csv"] = body(CSV)
        yield served


def test_a_download_is_written_whole_with_its_size_and_hash(origin: Served, tmp_path: Path):
    progress: list[int] = []
    fetched = fetcher().fetch(
        origin.url("/weather.csv"), tmp_path / "f.csv", max_bytes=1000, on_progress=progress.append
    )
    assert (tmp_path / "f.csv").read_bytes() == CSV
    assert fetched.size_bytes == len(CSV) and progress[-1] == len(CSV)
    assert fetched.final_url == origin.url("/weather.csv")
    assert origin.requests[0][1]["User-Agent"].startswith("assay-import")


def test_a_host_name_is_resolved_once_and_sent_as_host_header(origin: Served, tmp_path: Path):
    resolver = Resolver(["127.0.0.1"])
    url = f"http://data.example:{origin.port}/weather.csv"
    fetcher(resolver=resolver).fetch(url, tmp_path / "f.csv", max_bytes=1000)
    assert resolver.calls == [("data.example", origin.port)]
    assert origin.requests[0][1]["Host"] == f"data.example:{origin.port}"


def test_check_and_connection_resolve_the_same_idna_name(origin: Served, tmp_path: Path):
    resolver = Resolver(["127.0.0.1"])
    url = f"http://bücher.example:{origin.port}/weather.csv"
    checking = fetcher(resolver=resolver)
    checking.check(url)
    checking.fetch(url, tmp_path / "f.csv", max_bytes=1000)
    assert resolver.calls == [("xn--bcher-kva.example", origin.port)] * 2
    assert origin.requests[0][1]["Host"] == f"xn--bcher-kva.example:{origin.port}"


def test_of_several_addresses_only_an_allowed_one_is_connected_to(tmp_path: Path):
    with serve("127.0.0.1") as allowed, serve("127.0.0.2", port=allowed.port) as refused:
        allowed.routes["/d.csv"] = refused.routes["/d.csv"] = body(CSV)
        resolver = Resolver(["127.0.0.2", "127.0.0.1"])
        url = f"http://data.example:{allowed.port}/d.csv"
        fetcher(resolver=resolver).fetch(url, tmp_path / "f.csv", max_bytes=1000)
        assert (allowed.connections, refused.connections) == (1, 0)
        assert len(resolver.calls) == 1


def test_a_changed_dns_answer_is_checked_again_at_connect(tmp_path: Path):
    # Rebinding: the answer at submit is allowed, the one the worker gets is not.
    with serve("127.0.0.2") as internal:
        internal.routes["/d.csv"] = body(CSV)
        resolver = Resolver(["127.0.0.1"], ["127.0.0.2"])
        url = f"http://rebind.example:{internal.port}/d.csv"
        checking = fetcher(resolver=resolver)
        checking.check(url)
        with pytest.raises(UrlRefused, match=r"host 'rebind.example': 127\.0\.0\.2 is a loopback"):
            checking.fetch(url, tmp_path / "f.csv", max_bytes=1000)
        assert internal.connections == 0


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc/passwd", "only http and https URLs can be imported, not file:"),
        ("ftp://127.0.0.1/x.csv", "not ftp:"),
        ("gopher://127.0.0.1:70/_x", "not gopher:"),
        ("//127.0.0.1/x.csv", "a URL without a scheme"),
        ("http://user:secret@127.0.0.1/x.csv", "credentials in the URL"),
        ("http:///x.csv", "no host"),
        ("http://127.0.0.2/x.csv", "127.0.0.2 is a loopback address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
        ("http://10.0.0.1/x.csv", "10.0.0.1 is a private address"),
        ("http://[::1]/x.csv", "::1 is a loopback address"),
        ("http://[::ffff:169.254.169.254]/x.csv", "(IPv4 169.254.169.254) is a link-local"),
        ("http://0.0.0.0/x.csv", "0.0.0.0 is the unspecified address"),
        ("http://2130706434/x.csv", "127.0.0.2 is a loopback address"),  # decimal 127.0.0.2
        ("http://localhost/x.csv", "host 'localhost': "),
    ],
)
def test_refused_urls_are_refused_by_the_check_and_the_fetch(url, reason, tmp_path: Path):
    public_only = HttpUrlFetcher()  # nothing allowed beyond public addresses
    with pytest.raises(UrlRefused) as refused:
        public_only.check(url)
    assert reason in str(refused.value)
    with pytest.raises(UrlRefused) as refused_again:
        public_only.fetch(url, tmp_path / "f.csv", max_bytes=1000)
    assert reason in str(refused_again.value)


def test_up_to_five_redirects_are_followed_and_a_sixth_is_not(origin: Served, tmp_path: Path):
    for hop in range(6):
        origin.routes[f"/hop{hop}"] = redirect(f"/hop{hop + 1}" if hop < 5 else "/weather.csv")
    # /hop1 -> ... -> /hop5 -> /weather.csv: five redirects
    fetched = fetcher().fetch(origin.url("/hop1"), tmp_path / "a.csv", max_bytes=1000)
    assert fetched.final_url == origin.url("/weather.csv")
    with pytest.raises(FetchFailed, match="more than 5 redirects"):
        fetcher().fetch(origin.url("/hop0"), tmp_path / "b.csv", max_bytes=1000)


def test_a_redirect_to_another_scheme_is_refused(origin: Served, tmp_path: Path):
    origin.routes["/away"] = redirect("file:///etc/passwd")
    with pytest.raises(UrlRefused, match="redirect 1 to file:///etc/passwd refused: only http"):
        fetcher().fetch(origin.url("/away"), tmp_path / "f.csv", max_bytes=1000)


def test_a_redirect_to_a_refused_address_opens_no_connection(origin: Served, tmp_path: Path):
    with serve("127.0.0.3") as internal:
        internal.routes["/d.csv"] = body(CSV)
        origin.routes["/away"] = redirect(internal.url("/d.csv"), status=307)
        with pytest.raises(UrlRefused) as refused:
            fetcher().fetch(origin.url("/away"), tmp_path / "f.csv", max_bytes=1000)
        assert str(refused.value).startswith(
            f"redirect 1 to {internal.url('/d.csv')} refused: 127.0.0.3 is a loopback address"
        )
        assert (internal.connections, internal.requests) == (0, [])


def test_gzip_bodies_are_limited_by_their_decoded_size(origin: Served, tmp_path: Path):
    bomb = gzip.compress(b"0" * (4 * 1024 * 1024))  # 4 MiB of zeros in a few KiB
    assert len(bomb) < 64 * 1024
    gzipped = {"Content-Encoding": "gzip"}
    origin.routes["/bomb.csv"] = body(bomb, headers=gzipped)
    with pytest.raises(FetchFailed, match="over the import limit of 65536 bytes"):
        fetcher().fetch(origin.url("/bomb.csv"), tmp_path / "f.csv", max_bytes=64 * 1024)
    origin.routes["/small.csv"] = body(gzip.compress(CSV), headers=gzipped)
    fetched = fetcher().fetch(origin.url("/small.csv"), tmp_path / "g.csv", max_bytes=1000)
    assert (tmp_path / "g.csv").read_bytes() == CSV and fetched.size_bytes == len(CSV)


def test_a_body_in_an_encoding_it_does_not_decode_is_refused(origin: Served, tmp_path: Path):
    origin.routes["/x.csv"] = body(b"abc", headers={"Content-Encoding": "br"})
    with pytest.raises(FetchFailed, match="unsupported encoding: br"):
        fetcher().fetch(origin.url("/x.csv"), tmp_path / "f.csv", max_bytes=1000)


def test_a_server_that_does_not_answer_the_connection_times_out(tmp_path: Path):
    # A listening socket whose backlog is full: the handshake is never completed.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(8):  # fill the accept queue (the kernel allows backlog + 1)
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                fillers.append(filler)
            quick = fetcher(connect_timeout_s=0.3)
            with pytest.raises(FetchFailed) as failed:
                quick.fetch(f"http://127.0.0.1:{port}/x.csv", tmp_path / "f.csv", max_bytes=10)
        finally:
            for filler in fillers:
                filler.close()
    message = str(failed.value)
    assert "ASSAY_IMPORT_CONNECT_TIMEOUT_S" in message or "ASSAY_IMPORT_READ_TIMEOUT_S" in message


# --- TLS: SNI and the certificate are the host name's, the connection the checked address's --


def _certificate(names: list[str], tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A test CA and a server certificate for `names`: (server context, client context)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "assay test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "server.pem", tmp_path / "server.key"
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return server, client


def test_https_sends_the_host_name_as_sni_and_verifies_it(tmp_path: Path):
    server_tls, client_tls = _certificate(["data.example"], tmp_path)
    with serve("127.0.0.1", tls=server_tls) as secure:
        secure.routes["/weather.csv"] = body(CSV)
        resolver = Resolver(["127.0.0.1"])
        url = f"https://data.example:{secure.port}/weather.csv"
        fetched = fetcher(resolver=resolver, ssl_context=client_tls).fetch(
            url, tmp_path / "f.csv", max_bytes=1000
        )
        assert fetched.size_bytes == len(CSV)
        assert secure.server_names == ["data.example"]
        assert secure.requests[0][1]["Host"] == f"data.example:{secure.port}"
        assert resolver.calls == [("data.example", secure.port)]

        # The same address under a name the certificate does not cover: refused by TLS.
        other = f"https://other.example:{secure.port}/weather.csv"
        with pytest.raises(FetchFailed, match="certificate"):
            fetcher(resolver=Resolver(["127.0.0.1"]), ssl_context=client_tls).fetch(
                other, tmp_path / "g.csv", max_bytes=1000
            )
        assert len(secure.requests) == 1


def test_ipv6_loopback_is_reached_only_when_allowed(tmp_path: Path):
    try:
        server = serve("::1")
        served = server.__enter__()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        served.routes["/d.csv"] = body(CSV)
        with pytest.raises(UrlRefused, match="::1 is a loopback address"):
            fetcher().fetch(served.url("/d.csv"), tmp_path / "f.csv", max_bytes=1000)
        assert served.connections == 0
        allowed = HttpUrlFetcher(parse_networks("::1/128"))
        allowed.fetch(served.url("/d.csv"), tmp_path / "f.csv", max_bytes=1000)
        assert served.connections == 1
    finally:
        server.__exit__(None, None, None)
