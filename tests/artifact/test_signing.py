"""Signed artifacts: sign/verify round trip, and every loader refusing unsigned, wrongly signed and
tampered artifacts before any native code of theirs is loaded."""

import base64
import json
import os
import stat
import zipfile

import numpy as np
import pytest
from signing_helpers import flip_byte, marker_library, rewrite, write_key_pair
from tiny_models import TINY_SHAPE, save_pt2, tiny_model

import penni_deploy
from penni_deploy.artifact import runtime
from penni_deploy.artifact.signing import SIGNATURE_NAME, TRUSTED_KEY_ENV, sign_artifact, signed_message, \
    verify_artifact
from penni_deploy.cli import main
from penni_deploy.errors import ArtifactError, SignatureError


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("signing")


@pytest.fixture(scope="module")
def unsigned(folder):
    out = folder / "tiny.penni"
    penni_deploy.compile_model(str(save_pt2(tiny_model(), folder / "tiny.pt2")), str(out))
    return out


@pytest.fixture(scope="module")
def keys(folder):
    return {name: write_key_pair(folder, name) for name in ("alice", "mallory")}


@pytest.fixture(scope="module")
def signed(unsigned, keys, folder):
    out = folder / "signed.penni"
    out.write_bytes(unsigned.read_bytes())
    sign_artifact(out, keys["alice"][0])
    return out


@pytest.fixture(autouse=True)
def no_ambient_key(monkeypatch):
    monkeypatch.delenv(TRUSTED_KEY_ENV, raising=False)


@pytest.fixture
def no_native_code(monkeypatch):
    """Fail the test if the loader writes the library out or loads it."""
    import tvm

    def refuse(*args, **kwargs):
        raise AssertionError("native code was about to be loaded")

    monkeypatch.setattr(tvm.runtime, "load_module", refuse)
    monkeypatch.setattr(runtime.tempfile, "TemporaryDirectory", refuse)


def one_line_error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_signed_message_is_the_documented_bytes():
    # The C++ runner (cpp/src/signature.cc) builds these same bytes; this pins the format.
    message = signed_message(b"{}", "model.so", b"abc")
    assert message == (b"penni-deploy-signature-v1\n"
                       b"manifest.json 44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a\n"
                       b"model.so ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n")


def test_sign_verify_and_load(unsigned, keys, tmp_path, capsys):
    artifact = tmp_path / "a.penni"
    artifact.write_bytes(unsigned.read_bytes())
    os.chmod(artifact, 0o640)
    assert main(["sign", str(artifact), "--key", str(keys["alice"][0])]) == 0
    assert stat.S_IMODE(os.stat(artifact).st_mode) == 0o640
    assert not list(tmp_path.glob(".penni-sign-*")), "the temporary zip was left behind"
    with zipfile.ZipFile(artifact) as z:
        record = json.loads(z.read(SIGNATURE_NAME))
        assert z.read("model.so") == zipfile.ZipFile(unsigned).read("model.so")
    assert record["algorithm"] == "ecdsa-p256-sha256" and base64.b64decode(record["signature"])

    assert main(["verify", str(artifact), "--key", str(keys["alice"][1])]) == 0
    assert "ok: " in capsys.readouterr().out
    x = np.random.default_rng(0).standard_normal(TINY_SHAPE).astype(np.float32)
    expected = penni_deploy.load(unsigned)(x)
    np.testing.assert_array_equal(penni_deploy.load(artifact, trusted_key=keys["alice"][1])(x), expected)

    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(artifact), "-i", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy"),
                 "--trusted-key", str(keys["alice"][1])]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)


def test_resigning_replaces_the_signature(signed, keys, tmp_path):
    artifact = tmp_path / "b.penni"
    artifact.write_bytes(signed.read_bytes())
    sign_artifact(artifact, keys["mallory"][0])
    with zipfile.ZipFile(artifact) as z:
        assert z.namelist().count(SIGNATURE_NAME) == 1
    verify_artifact(artifact, keys["mallory"][1])
    with pytest.raises(SignatureError, match="signed by another key"):
        verify_artifact(artifact, keys["alice"][1])


def test_env_key_is_used_and_an_explicit_key_wins(signed, unsigned, keys, monkeypatch):
    monkeypatch.setenv(TRUSTED_KEY_ENV, str(keys["alice"][1]))
    penni_deploy.load(signed)
    with pytest.raises(SignatureError, match="is not signed"):
        penni_deploy.load(unsigned)
    monkeypatch.setenv(TRUSTED_KEY_ENV, str(keys["mallory"][1]))
    penni_deploy.load(signed, trusted_key=keys["alice"][1])


# --- refusals: every case, in every loader, before any native code ----------------------------

def _unsigned(signed, unsigned, tmp_path):
    return unsigned


def _other_key(signed, unsigned, tmp_path):
    return signed  # checked against mallory's key below


def _tampered_library(signed, unsigned, tmp_path):
    return rewrite(signed, tmp_path / "lib.penni", library_edit=flip_byte, fix_sha=True)


def _tampered_manifest(signed, unsigned, tmp_path):
    return rewrite(signed, tmp_path / "man.penni", manifest_edit=lambda m: m["target"].update(isa="sse2"))


def _library_not_matching_manifest(signed, unsigned, tmp_path):
    return rewrite(signed, tmp_path / "sha.penni", library_edit=flip_byte)


def _malformed_signature(signed, unsigned, tmp_path):
    out = tmp_path / "sig.penni"
    with zipfile.ZipFile(signed) as zin, zipfile.ZipFile(out, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, b"{not json" if name == SIGNATURE_NAME else zin.read(name))
    return out


CASES = {
    "unsigned": (_unsigned, "alice", "is not signed, and a trusted key is required"),
    "other-key": (_other_key, "mallory", "is signed by another key"),
    "tampered-library": (_tampered_library, "alice", "signature does not match the manifest and library"),
    "tampered-manifest": (_tampered_manifest, "alice", "signature does not match the manifest and library"),
    "library-not-matching-manifest": (_library_not_matching_manifest, "alice", "does not match the sha256"),
    "malformed-signature": (_malformed_signature, "alice", "signature.json is malformed"),
}


def _via_load(artifact, key, tmp_path, capsys, monkeypatch):
    with pytest.raises(ArtifactError) as info:
        penni_deploy.load(artifact, trusted_key=key)
    return str(info.value)


def _via_env(artifact, key, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(TRUSTED_KEY_ENV, str(key))
    with pytest.raises(ArtifactError) as info:
        penni_deploy.load(artifact)
    return str(info.value)


def _via_run(artifact, key, tmp_path, capsys, monkeypatch):
    np.save(tmp_path / "x.npy", np.zeros(TINY_SHAPE, np.float32))
    out = tmp_path / "y.npy"
    assert main(["run", str(artifact), "-i", str(tmp_path / "x.npy"), "-o", str(out), "--trusted-key", str(key)]) == 2
    assert not out.exists()
    return one_line_error(capsys)


def _via_verify(artifact, key, tmp_path, capsys, monkeypatch):
    assert main(["verify", str(artifact), "--key", str(key)]) == 2
    return one_line_error(capsys)


LOADERS = {"load": _via_load, "env": _via_env, "run": _via_run, "verify": _via_verify}


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("case", CASES)
def test_refused_before_native_code(case, loader, signed, unsigned, keys, tmp_path, capsys, monkeypatch,
                                    no_native_code):
    make, key_name, message = CASES[case]
    artifact = make(signed, unsigned, tmp_path)
    assert message in LOADERS[loader](artifact, keys[key_name][1], tmp_path, capsys, monkeypatch)


def test_a_refused_library_never_runs(signed, keys, tmp_path, monkeypatch):
    # The library's load-time constructor leaves a file: loading an artifact runs its code. Signed
    # by mallory and checked against alice's key, it is refused and the constructor never runs.
    marker = tmp_path / "ran"
    monkeypatch.setenv("PENNI_TEST_MARKER", str(marker))
    evil = marker_library(tmp_path)
    crafted = rewrite(signed, tmp_path / "evil.penni", library_edit=lambda _: evil, fix_sha=True)
    sign_artifact(crafted, keys["mallory"][0])
    with pytest.raises(SignatureError, match="signed by another key"):
        penni_deploy.load(crafted, trusted_key=keys["alice"][1])
    assert not marker.exists()
    with pytest.raises(Exception):  # noqa: B017 - without a key it is loaded (then fails: not a VM), and its code ran
        penni_deploy.load(crafted)
    assert marker.exists()


def test_duplicate_entries_are_refused(signed, keys, tmp_path):
    # Readers disagree on which of two same-named entries counts; even an identical copy is refused.
    crafted = tmp_path / "dup.penni"
    crafted.write_bytes(signed.read_bytes())
    library = zipfile.ZipFile(signed).read("model.so")
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(crafted, "a") as z:
        z.writestr("model.so", library)
    with pytest.raises(SignatureError, match="several entries named model.so"):
        penni_deploy.load(crafted, trusted_key=keys["alice"][1])


# --- keys that cannot be used ------------------------------------------------------------------

@pytest.mark.parametrize("kind, which, message", [
    ("p256", "public", "is a public key; sign with the private key"),
    ("rsa", "private", "holds an RSA key; artifacts are signed with EC P-256"),
    ("p384", "private", "holds a secp384r1 key; artifacts are signed with EC P-256"),
    ("missing", "private", "cannot read the signing key"),
    ("garbage", "private", "is not a PEM private key"),
], ids=["public-key", "rsa", "p384", "missing", "garbage"])
def test_sign_refuses_unusable_keys(kind, which, message, unsigned, tmp_path, capsys):
    if kind in ("missing", "garbage"):
        key = tmp_path / "k.pem"
        if kind == "garbage":
            key.write_text("hello")
    else:
        private, public = write_key_pair(tmp_path, "k", kind)
        key = public if which == "public" else private
    artifact = tmp_path / "a.penni"
    artifact.write_bytes(unsigned.read_bytes())
    assert main(["sign", str(artifact), "--key", str(key)]) == 2
    assert message in one_line_error(capsys)
    assert artifact.read_bytes() == unsigned.read_bytes()


def test_sign_refuses_encrypted_keys(unsigned, tmp_path, capsys):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = tmp_path / "enc.pem"
    key.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")))
    artifact = tmp_path / "a.penni"
    artifact.write_bytes(unsigned.read_bytes())
    assert main(["sign", str(artifact), "--key", str(key)]) == 2
    assert "is encrypted" in one_line_error(capsys)


def test_sign_refuses_a_tampered_artifact(signed, keys, tmp_path, capsys):
    bad = rewrite(signed, tmp_path / "bad.penni", library_edit=flip_byte)
    before = bad.read_bytes()
    assert main(["sign", str(bad), "--key", str(keys["alice"][0])]) == 2
    assert "does not match the sha256" in one_line_error(capsys)
    assert bad.read_bytes() == before


def test_verify_needs_a_key_and_a_public_one(signed, keys, capsys):
    assert main(["verify", str(signed)]) == 2
    assert "--key PUB.pem (or set PENNI_TRUSTED_KEY)" in one_line_error(capsys)
    assert main(["verify", str(signed), "--key", str(keys["alice"][0])]) == 2
    assert "is a private key; trust its public half" in one_line_error(capsys)
