"""A throwaway certificate authority and a server certificate signed by it,
for HTTPS test servers on loopback addresses."""
import datetime
import ipaddress
import pathlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(common_name: str) -> x509.Name:
  return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_certificates(directory: pathlib.Path, ips) -> dict:
  """Writes ca.pem, server.pem and server.key; returns their paths.

  The server certificate is valid for `localhost` and each of `ips`.
  """
  now = datetime.datetime.now(datetime.timezone.utc)
  ca_key = ec.generate_private_key(ec.SECP256R1())
  ca = (x509.CertificateBuilder()
        .subject_name(_name('beam-llm test CA')).issuer_name(_name('beam-llm test CA'))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True,
            crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256()))
  key = ec.generate_private_key(ec.SECP256R1())
  names = [x509.DNSName('localhost')] + [
      x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
  cert = (x509.CertificateBuilder()
          .subject_name(_name('localhost')).issuer_name(ca.subject)
          .public_key(key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.SubjectAlternativeName(names), critical=False)
          .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
          .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                         critical=False)
          .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
              ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
  paths = {'ca': directory / 'ca.pem', 'cert': directory / 'server.pem',
           'key': directory / 'server.key'}
  paths['ca'].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
  paths['cert'].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
  paths['key'].write_bytes(key.private_bytes(
      serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
      serialization.NoEncryption()))
  return {k: str(v) for k, v in paths.items()}
