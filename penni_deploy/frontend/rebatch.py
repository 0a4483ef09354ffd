"""Re-export a ``.pt2`` program at another batch size (``--batch N`` on a file exported at batch 1).

``ExportedProgram.module()`` refuses other input shapes (guards and an input-constraint hook), so
the module is taken without them and exported again at the new shape. That is only right when the
graph does not bake the old batch into a shape argument (``x.view(x.size(0), -1)`` exported at
batch 1 becomes ``view(x, [1, -1])``, which at batch 2 mixes the images together), so the re-export
is checked against the original program run image group by image group, and refused if it differs.
"""

from __future__ import annotations

import torch

from ..errors import UnsupportedModelError
from .load_model import user_input_shapes


def rebatch_program(program: torch.export.ExportedProgram,
                    input_shape: tuple[int, ...]) -> torch.export.ExportedProgram:
    """``program`` exported again for inputs of ``input_shape`` (only the batch may differ)."""
    (old_shape,) = user_input_shapes(program)
    if not isinstance(old_shape[0], int):  # exported with a dynamic batch: its module takes any
        return torch.export.export(program.module(), (torch.zeros(input_shape),))
    if tuple(old_shape[1:]) != tuple(input_shape[1:]):
        raise UnsupportedModelError(f"the .pt2 file was exported for input {tuple(old_shape)}; only its batch size "
                                    f"can change, not to {tuple(input_shape)}: export it at that shape")
    module = program.module(check_guards=False)
    for key, hook in list(module._forward_pre_hooks.items()):
        # the hook that checks inputs against the exported shapes (torch names it so since 2.1)
        if getattr(hook, "__name__", "") == "_check_input_constraints_pre_hook":
            del module._forward_pre_hooks[key]
    rebatched = torch.export.export(module, (torch.zeros(input_shape),))
    _check_same_per_image(program, rebatched, int(old_shape[0]), input_shape)
    return rebatched


def _check_same_per_image(original, rebatched, old_batch: int, input_shape: tuple[int, ...]) -> None:
    x = torch.randn(input_shape, generator=torch.Generator().manual_seed(0))
    groups = -(-input_shape[0] // old_batch)
    padded = torch.cat([x, x.new_zeros((groups * old_batch - input_shape[0],) + tuple(input_shape[1:]))])
    with torch.no_grad():
        run = original.module()
        expected = torch.cat([_first(run(g)) for g in padded.split(old_batch)])[: input_shape[0]]
        got = _first(rebatched.module()(x))
    scale = float(expected.abs().max()) or 1.0
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * scale):
        raise UnsupportedModelError(
            f"the .pt2 file was exported at batch {old_batch} and its graph fixes that batch (e.g. a view or "
            f"reshape to [{old_batch}, ...]), so it cannot be compiled for batch {input_shape[0]}: export it with "
            "a dynamic batch (torch.export.export(model, (x,), dynamic_shapes={'x': {0: torch.export.Dim('batch')}}))"
            f" or at batch {input_shape[0]}")


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out
