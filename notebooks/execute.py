"""Runs a notebook top to bottom without Jupyter, with parameters, as the tests and
`notebooks.render` do.

Parameters follow papermill's convention, so papermill runs these notebooks too: the cell
tagged `parameters` holds the defaults, and the overrides go into a new cell right after it
(tagged `injected-parameters`). The kernel is this interpreter (`sys.executable`), whatever
kernels Jupyter has installed elsewhere.
"""

from __future__ import annotations

import ast
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from notebooks import REPO_ROOT

NOTEBOOK_DIR = Path(__file__).resolve().parent
KERNEL_NAME = "lfm4ads-python"
PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"


class NotebookError(RuntimeError):
    """A notebook that cannot run: missing, no parameters cell, or a cell that failed."""


def notebooks() -> list[Path]:
    """The project's notebooks, in their numbered order."""
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def inject_parameters(nb: nbformat.NotebookNode, parameters: dict, name: str = "notebook"):
    """Inserts `name = value` lines after the `parameters` cell (in place); returns `nb`.

    Raises NotebookError when there are parameters and no cell is tagged `parameters`, or
    when a parameter is not one of the names that cell assigns (a typo would silently run
    the notebook on its defaults)."""
    if not parameters:
        return nb
    index = next((i for i, cell in enumerate(nb.cells)
                  if PARAMETERS_TAG in cell.get("metadata", {}).get("tags", [])), None)
    if index is None:
        raise NotebookError(f"{name}: no cell is tagged {PARAMETERS_TAG!r}, so parameters "
                            f"{sorted(parameters)} have nowhere to go")
    defined = _assigned_names(nb.cells[index].source)
    unknown = sorted(set(parameters) - defined)
    if unknown:
        raise NotebookError(f"{name}: unknown parameter(s) {unknown}; its parameters cell "
                            f"defines {sorted(defined)}")
    lines = ["# Parameters injected by notebooks.execute"]
    lines += [f"{key} = {value!r}" for key, value in parameters.items()]
    cell = nbformat.v4.new_code_cell("\n".join(lines), metadata={"tags": [INJECTED_TAG]})
    nb.cells.insert(index + 1, cell)
    return nb


def _assigned_names(source: str) -> set[str]:
    names = set()
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) else [])
        names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def execute(path: str | os.PathLike, parameters: dict | None = None,
            output: str | os.PathLike | None = None, timeout: int = 3600,
            log=None) -> nbformat.NotebookNode:
    """Executes the notebook at `path` in the repository root; returns it with outputs.

    Args:
        path: the `.ipynb` file.
        parameters: overrides of the `parameters` cell's names.
        output: where to write the executed notebook (with its outputs), if anywhere.
        timeout: seconds any one cell may take.
        log: called with a line per cell as it starts (progress), e.g. `print`.

    Raises:
        NotebookError: naming the notebook and the failing cell, with the kernel's traceback.
    """
    path = Path(path)
    if not path.is_file():
        raise NotebookError(f"no notebook at {path}")
    nb = inject_parameters(nbformat.read(path, as_version=4), parameters or {}, path.name)
    code_cells = sum(cell.cell_type == "code" for cell in nb.cells)
    with tempfile.TemporaryDirectory(prefix="lfm4ads-kernel-") as home:
        client = _ProgressClient(nb, timeout=timeout, kernel_name=KERNEL_NAME,
                         resources={"metadata": {"path": str(REPO_ROOT)}},
                         log_line=log, name=path.name, code_cells=code_cells)
        env = _kernel_environment(home)
        previous = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        try:
            client.execute()
        except CellExecutionError as error:
            raise NotebookError(f"{path.name}: cell {client.current} of {code_cells} "
                                f"failed:\n{error}") from None
        finally:
            for key, value in previous.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    if output is not None:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, output)
    return nb


def _kernel_environment(home: str) -> dict[str, str]:
    """A kernel spec for this interpreter, first on Jupyter's search path; figures drawn
    headless (Agg); the repository importable; TensorFlow's C++ INFO and WARNING lines off
    (as the project's commands do, unless the caller set the level)."""
    spec_dir = Path(home) / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (lfm4ads)", "language": "python"}))
    python_path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH"))
                                  if p)
    return {"JUPYTER_PATH": home, "MPLBACKEND": "Agg", "PYTHONPATH": python_path,
            "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}


class _ProgressClient(NotebookClient):
    """nbclient's client, counting code cells (for the error) and logging each as it starts."""

    def __init__(self, nb, log_line=None, name="", code_cells=0, **kwargs):
        super().__init__(nb, **kwargs)
        self.log_line, self.name, self.code_cells = log_line, name, code_cells
        self.current, self.started = 0, time.perf_counter()

    async def async_execute_cell(self, cell, cell_index, *args, **kwargs):
        if cell.cell_type == "code":
            self.current += 1
            if self.log_line is not None:
                self.log_line(f"{self.name}: cell {self.current}/{self.code_cells} "
                              f"({time.perf_counter() - self.started:.0f} s)")
        return await super().async_execute_cell(cell, cell_index, *args, **kwargs)
