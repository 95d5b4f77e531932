"""Figure helpers shared by the notebooks: one style, PNG files when asked, progress bars."""

from __future__ import annotations

import os

import matplotlib

if not os.environ.get("MPLBACKEND") and not os.environ.get("DISPLAY"):
    matplotlib.use("Agg")  # headless (CI, `notebooks.render`); Jupyter's inline backend wins
import matplotlib.pyplot as plt  # noqa: E402

DPI = 120


def style() -> None:
    """The notebooks' common look: readable sizes, light grid, no top/right spines."""
    plt.rcParams.update({
        "figure.figsize": (7.0, 4.2), "figure.dpi": 100, "savefig.dpi": DPI,
        "savefig.bbox": "tight", "axes.grid": True, "grid.alpha": 0.3,
        "axes.spines.top": False, "axes.spines.right": False, "axes.titlesize": 11,
        "axes.labelsize": 10, "legend.fontsize": 8, "legend.frameon": False,
    })


def save(fig, name: str, figures_dir: str | None) -> str | None:
    """Writes `fig` as `<figures_dir>/<name>.png` when `figures_dir` is set; returns the path.

    Raises ValueError when the figure has an axis without a title or axis labels (every
    figure the project publishes says what it shows and in which units)."""
    for ax in fig.get_axes():
        if not ax.get_visible() or not ax.has_data() and not ax.get_images():
            continue
        missing = [what for what, text in (("title", ax.get_title() or fig.get_suptitle()),
                                           ("x label", ax.get_xlabel()),
                                           ("y label", ax.get_ylabel())) if not text]
        if missing:
            raise ValueError(f"figure {name!r}: an axis has no {', '.join(missing)}")
    if not figures_dir:
        return None
    os.makedirs(figures_dir, exist_ok=True)
    path = os.path.join(figures_dir, f"{name}.png")
    fig.savefig(path)
    return path


def progress(iterable=None, **kwargs):
    """A text progress bar on stderr: it updates live in Jupyter and in a terminal, and an
    executed notebook keeps its last state (tqdm.auto's widget would keep only its first)."""
    from tqdm import tqdm

    return tqdm(iterable, **kwargs)
