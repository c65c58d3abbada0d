"""The federation's own certificate authority and the coordinator's TLS certificate.

``step-coord init`` makes a CA (its key stays in the federation folder, 0600) and a server
certificate signed by it, valid for the host names and IP addresses the nodes will dial plus
``localhost`` and ``127.0.0.1`` (the SuperLink's own processes connect to it on loopback). Node
operators get ``ca.crt`` and verify the coordinator against it; Flower has no client
certificates, so nodes prove who they are with their enrolled keys instead (registry.py).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from step_common.errors import StepError
from step_common.fileio import atomic_write_bytes

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.crt"
SERVER_KEY = "server.key"
LOOPBACK = ("localhost", "127.0.0.1")
CA_DAYS = 3650
SERVER_DAYS = 825  # the longest lifetime common TLS clients accept for a server certificate


@dataclass(frozen=True)
class TlsFiles:
    folder: Path

    @property
    def ca_cert(self) -> Path:
        return self.folder / CA_CERT

    @property
    def server_cert(self) -> Path:
        return self.folder / SERVER_CERT

    @property
    def server_key(self) -> Path:
        return self.folder / SERVER_KEY


def san_entry(host: str) -> x509.GeneralName:
    """An IP address SAN for an address, a DNS SAN for a host name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not host or any(c.isspace() or c in "/:@" for c in host):
        raise StepError(
            f"--host {host!r} is neither an IP address nor a host name: give the name or "
            "address nodes will use to reach the coordinator, e.g. --host coord.example.eu"
        )
    return x509.DNSName(host)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def create_tls(folder: Path, federation: str, hosts: list[str]) -> TlsFiles:
    """Write CA and server certificate and keys into ``folder``."""
    names = list(dict.fromkeys([*hosts, *LOOPBACK]))
    sans = [san_entry(h) for h in names]
    now = datetime.datetime.now(datetime.UTC)
    start = now - datetime.timedelta(minutes=5)  # tolerate small clock differences

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = _name(f"{federation} STEP federation CA")
    ca_cert = _ca_certificate(ca_key, ca_name, start, now + datetime.timedelta(days=CA_DAYS))

    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = _server_certificate(
        server_key,
        issuer_key=ca_key,
        issuer=ca_name,
        subject=_name(names[0]),
        sans=sans,
        not_before=start,
        not_after=now + datetime.timedelta(days=SERVER_DAYS),
    )

    files = TlsFiles(folder)
    atomic_write_bytes(folder / CA_KEY, _key_pem(ca_key), mode=0o600)
    atomic_write_bytes(files.server_key, _key_pem(server_key), mode=0o600)
    atomic_write_bytes(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    atomic_write_bytes(files.server_cert, server_cert.public_bytes(serialization.Encoding.PEM))
    return files


def _ca_certificate(
    key: ec.EllipticCurvePrivateKey,
    name: x509.Name,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.Certificate:
    """The self-signed CA certificate: it signs certificates, one level deep."""
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
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
        .sign(key, hashes.SHA384())
    )


def _server_certificate(
    key: ec.EllipticCurvePrivateKey,
    *,
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    subject: x509.Name,
    sans: list[x509.GeneralName],
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.Certificate:
    """The server certificate for ``sans``, signed by the CA."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(issuer_key, hashes.SHA384())
    )


def certificate_hosts(cert_path: Path) -> list[str]:
    """The SANs (host names and IP addresses) of a certificate, as text."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v) for v in san.get_values_for_type(x509.DNSName)] + [
        str(v) for v in san.get_values_for_type(x509.IPAddress)
    ]
