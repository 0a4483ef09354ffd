"""The one exception family of penni-deploy.

Every error a user can cause (a bad model file, an unsupported op, a wrong input) is a
``PenniError``: the CLI prints its message on one line and exits non-zero, without a traceback.
Messages name the problem and, where there is one, the fix.
"""


class PenniError(Exception):
    """Base class: a problem the user can act on."""

    exit_code = 2


class ModelLoadError(PenniError):
    """A model file is missing, corrupt, of an unknown format, or refused (untrusted pickle)."""


class UnsupportedModelError(PenniError):
    """The model uses operators or layer kinds the compiler does not handle."""


class InputSpecError(PenniError):
    """An input has the wrong shape or dtype, or no input shape is known."""


class ArtifactError(PenniError):
    """An artifact is corrupt, tampered with, or built for another target or TVM version."""


class SignatureError(ArtifactError):
    """An artifact is unsigned, signed by another key, or changed after signing; or a key file is unusable."""


class TargetError(PenniError):
    """An unknown or unusable compilation target."""


class OutputPathError(PenniError):
    """An output path cannot be written: its folder is missing or a file, or it is a folder itself."""
