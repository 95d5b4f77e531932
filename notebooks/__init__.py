"""The project's notebooks (`*.ipynb` here) and the code they share.

`notebooks.execute` runs one headless with parameters (papermill's convention: a cell tagged
`parameters`, overrides injected after it); `python -m notebooks.render --out docs/figures`
runs them all and writes their figures as PNG files; `notebooks.plots` is the figure helpers;
`notebooks.analysis` the computations behind the figures.

The notebooks' paths (data, work directories, results) are relative to the repository root;
each notebook moves there first (`os.chdir(REPO_ROOT)`), wherever Jupyter started it.
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
