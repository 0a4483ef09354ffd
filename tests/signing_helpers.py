"""Keys and artifact surgery shared by the signing tests and the C++ runner tests."""

from __future__ import annotations

import hashlib
import json
import subprocess
import zipfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

# What `openssl ecparam -name prime256v1 -genkey` (without -noout) writes before the key.
EC_PARAMETERS_BLOCK = b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"


def write_key_pair(folder: Path, name: str, kind: str = "p256") -> tuple[Path, Path]:
    """Write ``name.pem`` (private, in the layout openssl writes) and ``name.pub.pem``; returns both paths."""
    if kind == "p256":
        key = ec.generate_private_key(ec.SECP256R1())
        private = EC_PARAMETERS_BLOCK + key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.TraditionalOpenSSL,
                                                          serialization.NoEncryption())
    elif kind == "p384":
        key = ec.generate_private_key(ec.SECP384R1())
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    elif kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    else:
        raise ValueError(kind)
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    (folder / f"{name}.pem").write_bytes(private)
    (folder / f"{name}.pub.pem").write_bytes(public)
    return folder / f"{name}.pem", folder / f"{name}.pub.pem"


def rewrite(src: Path, dst: Path, manifest_edit=None, library_edit=None, fix_sha=False,
            compression=zipfile.ZIP_DEFLATED) -> Path:
    """Copy artifact ``src`` to ``dst``, editing the manifest (a function of the dict) or the library
    (bytes -> bytes). ``fix_sha`` records the edited library's sha256 in the manifest, so that only
    a signature can tell. Other entries (the signature) are copied unchanged."""
    with zipfile.ZipFile(src) as zin:
        entries = {name: zin.read(name) for name in zin.namelist()}
    if library_edit:
        entries["model.so"] = library_edit(entries["model.so"])
    if manifest_edit or fix_sha:
        manifest = json.loads(entries["manifest.json"])
        if manifest_edit:
            manifest_edit(manifest)
        if fix_sha:
            manifest["library"]["sha256"] = hashlib.sha256(entries["model.so"]).hexdigest()
            manifest["library"]["bytes"] = len(entries["model.so"])
        entries["manifest.json"] = json.dumps(manifest, indent=2).encode()
    with zipfile.ZipFile(dst, "w", compression=compression) as zout:
        for name, data in entries.items():
            zout.writestr(name, data)
    return dst


def flip_byte(data: bytes, at: int = 1000) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1:]


def marker_library(folder: Path) -> bytes:
    """A shared library whose load-time constructor creates the file named by $PENNI_TEST_MARKER:
    loading it is observable, so a test can show that a refused artifact never was."""
    source = folder / "marker.c"
    source.write_text('#include <fcntl.h>\n#include <stdlib.h>\n#include <unistd.h>\n'
                      '__attribute__((constructor)) static void mark(void) {\n'
                      '  const char* path = getenv("PENNI_TEST_MARKER");\n'
                      '  if (path) close(open(path, O_CREAT | O_WRONLY, 0600));\n}\n')
    library = folder / "marker.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    return library.read_bytes()
