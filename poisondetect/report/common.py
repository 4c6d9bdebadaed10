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


def write_table(df: pd.DataFrame, csv_path: str, tex_path: str, caption: str, label: str) -> None:
    """Write a table as CSV and as a booktabs LaTeX table, atomically."""
    with atomic_path(csv_path) as tmp:
        df.to_csv(tmp)
    tex = df.to_latex(
        na_rep="--",
        caption=caption,
        label=label,
        escape=True,
        multicolumn_format="c",
        float_format=lambda v: f"{v:.2f}",
    )
    if "\\toprule" not in tex:  # pandas uses booktabs rules; enforce for older versions
        tex = tex.replace("\\hline", "\\midrule")
    atomic_write_text(tex_path, tex)


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


def save(fig, png: str, pdf: str, dpi: int) -> None:
    for path in (png, pdf):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format=Path(path).suffix[1:], bbox_inches="tight")
    plt().close(fig)
