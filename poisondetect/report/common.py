"""What both parts' tables and figures share: the matplotlib backend, the LaTeX/CSV table writer,
labels, and saving a figure (PNG + PDF, atomically)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from poisondetect.detectors import registry
from poisondetect.io import atomic_path, atomic_write_text

CELL = ["dataset", "arch", "scenario", "seed"]


def plt():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def _flat_header(col) -> str:
    """One header cell for a (possibly multi-level) column: its non-empty levels, joined."""
    parts = col if isinstance(col, tuple) else (col,)
    return " ".join(str(p) for p in parts if str(p) not in ("", "nan"))


_LATEX_SPECIAL = {c: f"\\{c}" for c in "&%$#_{}"} | {
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "\\": r"\textbackslash{}",
}


def latex_escape(text: str) -> str:
    """Plain text (a task or data set name) for a LaTeX caption."""
    return "".join(_LATEX_SPECIAL.get(c, c) for c in str(text))


def latex_table(df: pd.DataFrame, caption: str, label: str) -> str:
    """A LaTeX table that compiles as it is with the booktabs package: one header row (the row
    index becomes ordinary columns, a multi-level header is joined), \\toprule / \\midrule /
    \\bottomrule and nothing else between the rows; text escaped, numbers to two decimals, empty
    cells as --. ``caption`` is LaTeX already."""
    flat = df.reset_index() if any(n is not None for n in df.index.names) else df.copy()
    flat.columns = [_flat_header(c) for c in flat.columns]
    styler = (
        flat.style.hide(axis="index")
        .format(precision=2, na_rep="--", escape="latex")
        .format_index(escape="latex", axis=1)
    )
    return styler.to_latex(
        hrules=True,
        caption=caption,
        label=label,
        position="htbp",
        position_float="centering",
        column_format="l" * len(flat.columns),
    )


def write_table(df: pd.DataFrame, csv_path: str, tex_path: str, caption: str, label: str) -> None:
    """Write a table as CSV (the data frame as it is) and as a booktabs LaTeX table, atomically."""
    with atomic_path(csv_path) as tmp:
        df.to_csv(tmp)
    atomic_write_text(tex_path, latex_table(df, caption, label))


def series_styles(names, palette: str = "colorblind") -> dict[str, dict]:
    """A colour, marker and line style for each of ``names`` such that no two share all three
    (a colour-blind-safe palette of 10 colours, cycled with markers and line styles): lines that
    coincide stay told apart."""
    import seaborn as sns

    colors = sns.color_palette(palette, 10)
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    lines = ["-", "--", "-.", ":"]
    return {
        n: {
            "color": colors[i % 10],
            "marker": markers[i % len(markers)],
            "linestyle": lines[(i // 10) % len(lines)] if i >= 10 else lines[i % 2],
            "label": n,
        }
        for i, n in enumerate(names)
    }


def detector_label(detector: str) -> str:
    """A sample-level detector's label in tables and figures (the registry's), and the labels of
    the two reference rows: no defence, clean data."""
    return {"none": "no defence", "clean_data": "clean data"}.get(
        detector, registry.label("sample", detector)
    )


def labelled(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df["detector"] = df["detector"].map(detector_label)
    return df


def themed_table(csv: str, context: str):
    """seaborn themed for a figure (Agg backend) and the analysis table, detectors labelled."""
    import seaborn as sns

    plt()
    sns.set_theme(context=context, style="whitegrid")
    return sns, labelled(pd.read_csv(csv))


# No creation date (and no software version) in the files: the same run writes the same bytes.
_METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Producer": None}}


def save(fig, png: str, pdf: str, dpi: int) -> None:
    """The figure as PNG and PDF, atomically, without a time stamp (byte-identical reruns)."""
    for path in (png, pdf):
        fmt = Path(path).suffix[1:]
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format=fmt, bbox_inches="tight", metadata=_METADATA[fmt])
    plt().close(fig)
