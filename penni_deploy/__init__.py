"""penni-deploy: a deployment compiler for PENNI-compressed CNNs, built on Apache TVM.

``penni_deploy.load(path)`` runs an artifact with the TVM runtime only; ``compile_model`` builds
one (imported lazily: it needs torch and the TVM compiler).
"""

__version__ = "0.1.0"


def load(path, device=None, threads=None, trusted_key=None):
    """Load a compiled ``.penni`` artifact; see :func:`penni_deploy.artifact.runtime.load`."""
    from .artifact.runtime import load as _load

    return _load(path, device, threads, trusted_key)


def compile_model(*args, **kwargs):
    """Compile a model file into an artifact; see :func:`penni_deploy.compiler.compile_model`."""
    from .compiler import compile_model as _compile_model

    return _compile_model(*args, **kwargs)


__all__ = ["__version__", "load", "compile_model"]
