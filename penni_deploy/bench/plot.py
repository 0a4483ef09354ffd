"""A picture of a bench report: median latency per engine and batch size, p90 as the whisker.

matplotlib is optional (``pip install penni-deploy[bench]``); without it ``plot_bench`` says how to
get it.
"""

from __future__ import annotations

from ..errors import PenniError


def plot_bench(report: dict, path: str) -> str:
    """Write a PNG bar chart of ``report`` (from ``run_bench``) to ``path``; returns ``path``."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        raise PenniError("--plot needs matplotlib: pip install matplotlib (or penni-deploy[bench])") from None

    measured = [r for r in report["results"] if "median_ms" in r]
    batches = sorted({r["batch"] for r in measured})
    engines = list(dict.fromkeys(r["engine"] for r in measured))
    fig, axes = plt.subplots(1, len(batches), figsize=(4.5 * len(batches), 3.8), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        rows = {r["engine"]: r for r in measured if r["batch"] == batch}
        names = [e for e in engines if e in rows]
        medians = [rows[e]["median_ms"] for e in names]
        whiskers = [rows[e]["p90_ms"] - rows[e]["median_ms"] for e in names]
        colors = ["tab:green" if e == "penni-deploy" else "tab:gray" for e in names]
        bars = ax.bar(range(len(names)), medians, yerr=[[0] * len(names), whiskers], color=colors, capsize=3)
        base = rows.get("torch-dense") or rows.get("torch-as-saved")
        for bar, name in zip(bars, names):
            label = f"{rows[name]['median_ms']:.2f} ms"
            if base:
                label += f"\n{base['median_ms'] / rows[name]['median_ms']:.1f}×"
            top = rows[name]["p90_ms"]  # above the whisker
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, top), ha="center", va="bottom",
                        fontsize=7, xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"batch {batch}", fontsize=10)
        ax.set_ylabel("median latency (ms), whisker p90")
        ax.margins(y=0.25)
    target = report["target"].get("mcpu") or report["target"].get("name")
    fig.suptitle(f"{report['model']} — {report['threads']} threads, {target}; speedup vs PyTorch eager", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
