"""Sign artifacts with an EC P-256 key, and refuse unsigned or tampered ones before loading them.

An artifact's library is native code: loading it runs it with the loader's privileges. A signature
lets a deployment accept only artifacts made by whoever holds the private key.

What is signed (version 1). ``signature.json`` in the zip holds an ECDSA P-256 / SHA-256 signature
(DER, base64) over these exact bytes, UTF-8, each line ending in ``\\n``::

    penni-deploy-signature-v1
    manifest.json <sha256 hex of the manifest entry's bytes, as stored in the zip>
    <library file name> <sha256 hex of the library entry's bytes>

The manifest names the library and records its sha256, so the two hashes bind everything the
loaders use; the library hash is computed from the library itself, not copied from the manifest.
``signature.json`` also records ``key_id``, the sha256 hex of the public key's DER
SubjectPublicKeyInfo, only to tell "signed by another key" from "tampered" in error messages;
the decision is the signature check alone. The C++ runner (``cpp/src/signature.cc``) verifies the
same bytes. Archives with duplicate entry names are refused, since two readers could pick
different copies.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import zipfile
import zlib
from datetime import datetime, timezone
from typing import Union

from ..errors import ArtifactError, SignatureError
from .manifest import LIBRARY_NAME, MANIFEST_NAME
from .package import write_zip_atomically

SIGNATURE_NAME = "signature.json"
SIGNATURE_FORMAT = "penni-deploy-signature-v1"
ALGORITHM = "ecdsa-p256-sha256"
#: The environment variable every loader reads when no trusted key is passed.
TRUSTED_KEY_ENV = "PENNI_TRUSTED_KEY"

_MAKE_KEY = ("openssl ecparam -name prime256v1 -genkey -noout -out key.pem && "
             "openssl ec -in key.pem -pubout -out pub.pem")

KeyPath = Union[str, "os.PathLike[str]"]


def signed_message(manifest: bytes, library_name: str, library: bytes) -> bytes:
    """The bytes a version-1 signature covers (see the module docstring)."""
    return (f"{SIGNATURE_FORMAT}\n"
            f"{MANIFEST_NAME} {hashlib.sha256(manifest).hexdigest()}\n"
            f"{library_name} {hashlib.sha256(library).hexdigest()}\n").encode("utf-8")


def key_id(public_key) -> str:
    """sha256 hex of the key's DER SubjectPublicKeyInfo (what ``openssl pkey -pubin -outform DER`` writes)."""
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _read_pem(path: KeyPath, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise SignatureError(f"cannot read the {what} {os.fspath(path)}: {exc.strerror or exc}; "
                             f"make one with: {_MAKE_KEY}") from None


def _check_p256(key, path: KeyPath) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        if isinstance(key.curve, ec.SECP256R1):
            return
        kind = f"a {key.curve.name}"
    else:  # e.g. RSAPrivateKey -> "an RSA"
        name = type(key).__name__.lstrip("_").replace("PrivateKey", "").replace("PublicKey", "")
        kind = f"an {name}" if name[:1] in "AEIOUR" else f"a {name}"
    raise SignatureError(f"{os.fspath(path)} holds {kind} key; artifacts are signed with EC P-256 (prime256v1) keys: "
                         f"{_MAKE_KEY}")


def load_private_key(path: KeyPath):
    """The EC P-256 private key in PEM file ``path`` (unencrypted, as ``openssl ecparam -genkey`` writes)."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    pem = _read_pem(path, "signing key")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise SignatureError(f"{os.fspath(path)} is encrypted; decrypt it first "
                             "(openssl ec -in KEY.pem -out plain.pem) or sign with an unencrypted key") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        if b"PUBLIC KEY" in pem:
            raise SignatureError(f"{os.fspath(path)} is a public key; sign with the private key it came from") from None
        raise SignatureError(f"{os.fspath(path)} is not a PEM private key ({exc}); make one with: "
                             f"{_MAKE_KEY}") from None
    _check_p256(key, path)
    return key


def load_public_key(path: KeyPath):
    """The EC P-256 public key in PEM file ``path`` (as ``openssl ec -pubout`` writes)."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    pem = _read_pem(path, "trusted key")
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm) as exc:
        if b"PRIVATE KEY" in pem:
            raise SignatureError(f"{os.fspath(path)} is a private key; trust its public half instead: "
                                 "openssl ec -in KEY.pem -pubout -out pub.pem") from None
        raise SignatureError(f"{os.fspath(path)} is not a PEM public key ({exc})") from None
    _check_p256(key, path)
    return key


def resolve_trusted_key(trusted_key: KeyPath | None) -> str | None:
    """The key every loader must check against: ``trusted_key``, else ``$PENNI_TRUSTED_KEY``, else none."""
    if trusted_key is not None and os.fspath(trusted_key) != "":
        return os.fspath(trusted_key)
    return os.environ.get(TRUSTED_KEY_ENV) or None


def verify_signature(path: str, names: list[str], manifest: bytes, library_name: str, library: bytes,
                     signature: bytes | None, trusted_key: KeyPath) -> str:
    """Check that ``signature`` (the ``signature.json`` entry, or None) signs these bytes with ``trusted_key``.

    Returns the key id. Raises ``SignatureError`` naming what is wrong: no signature, a signature
    by another key, or one that does not match the contents (tampered after signing).
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    public_key = load_public_key(trusted_key)
    trusted_id = key_id(public_key)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SignatureError(f"{path} holds several entries named {', '.join(duplicates)} (crafted or damaged); "
                             "refusing to load it")
    if signature is None:
        raise SignatureError(f"{path} is not signed, and a trusted key is required ({os.fspath(trusted_key)}); "
                             "sign it with: penni-deploy sign ARTIFACT --key KEY.pem")
    try:
        record = json.loads(signature)
        if record.get("format") != SIGNATURE_FORMAT or record.get("algorithm") != ALGORITHM:
            raise ValueError(f"format {record.get('format')!r}, algorithm {record.get('algorithm')!r}")
        der = base64.b64decode(record["signature"], validate=True)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SignatureError(f"{path}: {SIGNATURE_NAME} is malformed or of an unknown kind ({exc}); "
                             "sign the artifact again with penni-deploy sign") from None
    try:
        public_key.verify(der, signed_message(manifest, library_name, library), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        signer = record.get("key_id")
        if signer != trusted_id:
            raise SignatureError(f"{path} is signed by another key (key id {str(signer)[:16]}…), not by the "
                                 f"trusted key {os.fspath(trusted_key)} ({trusted_id[:16]}…); refusing to load "
                                 "it") from None
        raise SignatureError(f"{path}: the signature does not match the manifest and library (changed after "
                             "signing); refusing to load it") from None
    return trusted_id


def _read_entries(path: str) -> list[tuple[zipfile.ZipInfo, bytes]]:
    if not os.path.isfile(path):
        raise ArtifactError(f"no such artifact: {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            return [(info, archive.read(info)) for info in archive.infolist()]
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as exc:
        raise ArtifactError(f"{path} is not a readable penni-deploy artifact (corrupt or truncated: {exc}); "
                            "recompile it") from None


def _checked_contents(path: str, names: list[str], by_name: dict[str, bytes]) -> tuple[bytes, str, bytes]:
    """The manifest bytes, library name and library of an artifact about to be signed, checked as a loader would."""
    from .manifest import Manifest

    if len(set(names)) != len(names):
        raise SignatureError(f"{path} holds duplicate entries (crafted or damaged); recompile it")
    if MANIFEST_NAME not in by_name:
        raise ArtifactError(f"{path} lacks '{MANIFEST_NAME}' (not a penni-deploy artifact, or damaged); recompile it")
    manifest = by_name[MANIFEST_NAME]
    library_info = Manifest.from_json(manifest.decode("utf-8", errors="replace")).library
    library_name = library_info.get("file", LIBRARY_NAME)
    library = by_name.get(library_name)
    if library is None:
        raise ArtifactError(f"{path} lacks '{library_name}' (not a penni-deploy artifact, or damaged); recompile it")
    if hashlib.sha256(library).hexdigest() != library_info.get("sha256"):
        raise ArtifactError(f"{path}: the library does not match the sha256 in its manifest (tampered or damaged); "
                            "recompile it")
    return manifest, library_name, library


def sign_artifact(path: KeyPath, key: KeyPath) -> str:
    """Sign artifact ``path`` in place with the EC P-256 private key in PEM file ``key``; returns the key id.

    The artifact is checked first (readable, library matching its manifest's sha256), any earlier
    signature is replaced, and the zip is rewritten next to itself then renamed over it with the
    same permissions, so a failure leaves the original untouched.
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    path = os.fspath(path)
    private_key = load_private_key(key)
    entries = _read_entries(path)
    names = [info.filename for info, _ in entries]
    by_name = {info.filename: data for info, data in entries}
    manifest, library_name, library = _checked_contents(path, names, by_name)
    der = private_key.sign(signed_message(manifest, library_name, library), ec.ECDSA(hashes.SHA256()))
    signer = key_id(private_key.public_key())
    record = {"format": SIGNATURE_FORMAT, "algorithm": ALGORITHM, "key_id": signer,
              "signature": base64.b64encode(der).decode("ascii"),
              "signed": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    mode = os.stat(path).st_mode & 0o7777
    kept = [(name, by_name[name]) for name in names if name != SIGNATURE_NAME]
    write_zip_atomically(os.path.abspath(path), kept + [(SIGNATURE_NAME, json.dumps(record, indent=2).encode())],
                         mode=mode, what="the signed artifact")
    return signer


def verify_artifact(path: KeyPath, trusted_key: KeyPath) -> str:
    """Check artifact ``path`` fully (readable, library sha256, signature by ``trusted_key``); returns the key id.

    Loads no native code: it is what ``load(path, trusted_key=...)`` checks before loading.
    """
    from .runtime import _read

    path = os.fspath(path)
    _read(path, with_library=True, trusted_key=trusted_key)
    return key_id(load_public_key(trusted_key))
