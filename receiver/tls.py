"""TLS between a primary and its peers' receivers: a self-signed certificate, pinned.

There is no certificate authority between two servers of one app: each receiver
makes its own self-signed certificate (``make_cert``, with Debian's ``openssl``)
and the primary pins it by its SHA-256 fingerprint in ``peer_tls`` (or by the
certificate file itself, copied from the peer). The pin is what is trusted, not
a name, so the certificate's subject does not matter and hostname checks are off.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from shipyard.config import PIN
from shipyard.errors import ShipyardError

if TYPE_CHECKING:  # imported where TLS is spoken: most deploys (one host, or plain HTTP) never
    import ssl

DAYS = 3650  # a pin is replaced by hand when the certificate is; it need not expire first


def fingerprint(der: bytes) -> str:
    """``sha256:AB:CD:…`` of a certificate in DER form (what ``openssl x509 -fingerprint`` says)."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return "sha256:" + ":".join(digest[i : i + 2] for i in range(0, 64, 2))


def file_fingerprint(path: Path) -> str:
    try:
        pem = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ShipyardError(
            f"cannot read the certificate {path}: {getattr(exc, 'strerror', None) or exc}",
            "copy the receiver's cert.pem here, or pin its sha256 fingerprint instead",
        ) from None
    import ssl

    try:
        return fingerprint(ssl.PEM_cert_to_DER_cert(pem))
    except ValueError:
        raise ShipyardError(f"{path} is not a PEM certificate") from None


def pin_of(value: str) -> str:
    """A ``peer_tls`` value (a fingerprint, or a certificate file) as a normalised fingerprint."""
    if PIN.match(value.strip()):
        hexdigest = value.strip()[len("sha256:") :].replace(":", "").upper()
        return "sha256:" + ":".join(hexdigest[i : i + 2] for i in range(0, 64, 2))
    return file_fingerprint(Path(value))


def make_cert(cert: Path, key: Path, address: str) -> bool:
    """Create a self-signed certificate and its key (mode 600) unless both exist; True if made."""
    if cert.is_file() and key.is_file():
        return False
    openssl = shutil.which("openssl")
    if not openssl:
        raise ShipyardError(
            "openssl is not installed: cannot make the receiver's certificate",
            "apt-get install openssl",
        )
    for path in (cert, key):
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    host = address.rpartition(":")[0].strip("[]")
    tmp_key, tmp_cert = key.with_name(f".{key.name}.tmp"), cert.with_name(f".{cert.name}.tmp")
    for path in (tmp_key, tmp_cert):
        path.unlink(missing_ok=True)
    old = os.umask(0o077)
    try:
        result = subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
            + ["-nodes", "-days", str(DAYS), "-subj", f"/CN={host or 'shipyard-receiver'}"]
            + ["-keyout", str(tmp_key), "-out", str(tmp_cert)],
            capture_output=True,
            text=True,
        )
    finally:
        os.umask(old)
    if result.returncode:
        for path in (tmp_key, tmp_cert):
            path.unlink(missing_ok=True)
        raise ShipyardError(f"openssl req failed: {result.stderr.strip()[-300:]}")
    os.replace(tmp_key, key)
    tmp_cert.chmod(0o644)
    os.replace(tmp_cert, cert)
    return True


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """What the receiver serves with: TLS 1.2 or later, its own certificate."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ShipyardError(
            f"cannot load the receiver's certificate {cert} / key {key}: {exc}",
            "make them with `shipyard provision --receiver ADDR:PORT` "
            "(or `shipyard receiver --listen ADDR:PORT --make-cert`)",
        ) from None
    return context


def client_context() -> ssl.SSLContext:
    """What the primary connects with: no CA and no hostname, the caller checks the pin."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def presented(sock: ssl.SSLSocket) -> str:
    """The fingerprint of the certificate the other end presented."""
    return fingerprint(sock.getpeercert(binary_form=True) or b"")


def matches(seen: str, pin: str) -> bool:
    return hmac.compare_digest(seen, pin)
