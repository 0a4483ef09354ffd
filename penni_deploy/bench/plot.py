"""A picture of a bench report: median latency per engine and batch size, p90 as the whisker.

Horizontal bars, one panel per batch size, every engine of the report on its own line in the report's
order, so that the ~14 engines of ``bench --peers`` stay readable; an engine that could not run keeps
its line, marked "not run". penni-deploy is the one green bar; the roofline, where measured, is a
dashed line. The latency axis turns logarithmic when the bars span more than 20×.

matplotlib is optional (``pip install penni-deploy[bench]``); without it ``plot_bench`` says how to
get it.
"""

from __future__ import annotations

from ..errors import PenniError

_LOG_SPAN = 20.0  # max/min median above which the latency axis is logarithmic
_FAMILY_COLORS = (  # by engine-name prefix, first match wins
    ("penni-deploy", "tab:green"),
    ("torch-compile", "tab:purple"),
    ("torch", "tab:gray"),
    ("tvm", "tab:olive"),
    ("onnxruntime", "tab:blue"),
    ("openvino", "tab:cyan"),
    ("deepsparse", "tab:orange"),
)


def _color(engine: str) -> str:
    return next((color for prefix, color in _FAMILY_COLORS if engine.startswith(prefix)), "tab:brown")


def plot_bench(report: dict, path: str) -> str:
    """Write a PNG bar chart of ``report`` (from ``run_bench``) to ``path``; returns ``path``."""
    fig = bench_figure(report)  # says how to install matplotlib when it is missing
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def bench_figure(report: dict):
    """The chart of ``report`` as a matplotlib Figure: one panel per batch size, one line per engine."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        raise PenniError("--plot needs matplotlib: pip install matplotlib (or penni-deploy[bench])") from None

    batches = sorted({r["batch"] for r in report["results"]})
    engines = list(dict.fromkeys(r["engine"] for r in report["results"]))
    medians = [r["median_ms"] for r in report["results"] if "median_ms" in r]
    log = bool(medians) and max(medians) / min(medians) > _LOG_SPAN
    fig, axes = plt.subplots(1, len(batches), figsize=(6.0 * len(batches), 1.6 + 0.32 * len(engines)),
                             squeeze=False)
    for ax, batch in zip(axes[0], batches):
        _draw_panel(ax, report, batch, engines, log)
    target = report["target"].get("mcpu") or report["target"].get("name")
    baseline = "as saved" if any(r["engine"] == "torch-as-saved" for r in report["results"]) else "dense"
    fig.suptitle(f"{report['model']} — {report['threads']} threads, {target}; speedup vs PyTorch eager ({baseline})",
                 fontsize=10)
    fig.tight_layout()
    return fig


def _tick(engine: str, row: dict) -> str:
    """The engine's name, with its precision where the name does not already say it."""
    precision = row.get("precision", "fp32")
    named = precision in engine or (precision == "fp32" and "f32" in engine)
    return engine if precision == "fp32" or named else f"{engine} ({precision})"


def _draw_panel(ax, report: dict, batch: int, engines: list[str], log: bool) -> None:
    rows = {r["engine"]: r for r in report["results"] if r["batch"] == batch}
    measured = [e for e in engines if "median_ms" in rows.get(e, {})]
    ys = {e: i for i, e in enumerate(engines)}
    ax.barh([ys[e] for e in measured], [rows[e]["median_ms"] for e in measured],
            xerr=[[0] * len(measured), [rows[e]["p90_ms"] - rows[e]["median_ms"] for e in measured]],
            color=[_color(e) for e in measured], capsize=2, height=0.7)
    base = rows.get("torch-dense") or rows.get("torch-as-saved")
    for e in engines:
        if e not in measured:
            ax.annotate("not run (see report)", (0, ys[e]), xytext=(4, 0), textcoords="offset points",
                        xycoords=("axes fraction", "data"), va="center", fontsize=7, color="tab:red")
            continue
        median = rows[e]["median_ms"]
        label = f"{median:.3g} ms" if median < 100 else f"{median:.0f} ms"
        if base and "median_ms" in base:
            label += f"  {base['median_ms'] / median:.1f}×"
        ax.annotate(label, (rows[e]["p90_ms"], ys[e]), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize=7, fontweight="bold" if e == "penni-deploy" else "normal")
    bounds = report.get("roofline_ms", {})
    roofline = bounds.get(batch) or bounds.get(str(batch))  # str keys once the report went through JSON
    if roofline:
        ax.axvline(roofline, color="tab:red", linestyle="--", linewidth=1)
        ax.annotate(f"roofline {roofline:.3g} ms", (roofline, 0.0), xycoords=("data", "axes fraction"),
                    xytext=(2, 3), textcoords="offset points", fontsize=7, color="tab:red")
    ax.set_yticks(range(len(engines)), [_tick(e, rows.get(e, {})) for e in engines], fontsize=8)
    for tick in ax.get_yticklabels():
        if tick.get_text().split(" (")[0] == "penni-deploy":
            tick.set_fontweight("bold")
    ax.invert_yaxis()  # the report's first engine on top
    ax.margins(x=0.35)  # room for the labels right of the bars
    if log:
        ax.set_xscale("log")
        smallest = min([rows[e]["median_ms"] for e in measured] + ([roofline] if roofline else []), default=1.0)
        ax.set_xlim(smallest / 2, ax.get_xlim()[1])
    ax.set_xlabel("median latency (ms), whisker p90" + (", log scale" if log else ""))
    ax.set_title(f"batch {batch}", fontsize=10)
