"""A picture of a compress run: accuracy, parameters and MACs after each stage.

Written beside the JSON summary when matplotlib is installed (it is optional; the run does not
depend on it).
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def plot_stages(summaries: list, path: str) -> str | None:
    """Draw ``summaries`` (``StageSummary`` objects) to ``path``; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib not installed: no stage plot")
        return None
    stages = [s.stage for s in summaries]
    fig, (acc_ax, size_ax) = plt.subplots(1, 2, figsize=(9, 3.4))
    acc_ax.plot(stages, [100 * s.accuracy for s in summaries], marker="o", color="tab:green")
    acc_ax.set_ylabel("test top-1 (%)")
    acc_ax.set_title("accuracy after each stage", fontsize=10)
    size_ax.plot(stages, [s.effective_params / 1e6 for s in summaries], marker="o", label="parameters (M, effective)")
    size_ax.plot(stages, [s.macs / 1e6 / 100 for s in summaries], marker="s", label="MACs (×100 M)")
    size_ax.set_title("model size and cost", fontsize=10)
    size_ax.legend(fontsize=8)
    for ax in (acc_ax, size_ax):
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
