"""Test certificates for the router's TLS test (`crates/smelt-serve/tests/router.rs`): an
authority, a server certificate it signed for `localhost` and 127.0.0.1, and an unrelated second
authority (a remote signed by someone else must be refused). Valid from 2026 for a century, so
the committed files do not expire under the test; regenerate with (needs `cryptography`, which
the Flower venv of scripts/test has):

    python make_certs.py crates/smelt-serve/tests/tls    # ca.pem, server.pem, server.key, other-ca.pem
"""
import datetime
import ipaddress
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

out = sys.argv[1]
start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
end = datetime.datetime(2126, 1, 1, tzinfo=datetime.timezone.utc)


def name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def authority(cn):
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


ca_key, ca = authority("smelt router test CA")
_, other = authority("someone else's CA")
key = ec.generate_private_key(ec.SECP256R1())
server = (x509.CertificateBuilder().subject_name(name("localhost")).issuer_name(ca.subject)
          .public_key(key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
          .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
          .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
          .sign(ca_key, hashes.SHA256()))
os.makedirs(out, exist_ok=True)
open(os.path.join(out, "ca.pem"), "wb").write(pem(ca))
open(os.path.join(out, "other-ca.pem"), "wb").write(pem(other))
open(os.path.join(out, "server.pem"), "wb").write(pem(server))
open(os.path.join(out, "server.key"), "wb").write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
