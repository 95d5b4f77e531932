"""Every notebook runs top to bottom on small data and writes its figures (issue: notebooks
execute in `make test`); the parameter injection refuses what it cannot honour."""

import nbformat
import pytest

from notebooks import render
from notebooks.execute import NotebookError, execute, inject_parameters, notebooks

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_every_notebook_has_small_sizes_and_figures():
    names = [p.name for p in notebooks()]
    assert names, "notebooks/ has no notebooks"
    assert sorted(render.SMALL) == sorted(names)
    assert sorted(render.FIGURES) == sorted(names)


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: p.stem)
def test_notebook_is_committed_clean(path):
    """Valid, without outputs (the figures come from `notebooks.render`), with a parameters
    cell that sets `figures_dir` and `workdir` (what the render command and this suite pass)."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code), path.name
    tagged = [cell for cell in code if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, path.name
    for name in ("figures_dir", "workdir"):
        assert f"\n{name} = " in "\n" + tagged[0].source, (path.name, name)


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: p.stem)
@pytest.mark.slow
def test_notebook_runs_and_writes_its_figures(path, tmp_path):
    figures = tmp_path / "figures"
    parameters = {**render.SMALL[path.name], "figures_dir": str(figures),
                  "workdir": str(tmp_path / "work")}
    nb = execute(path, parameters, output=tmp_path / path.name, timeout=900)
    errors = [o for cell in nb.cells if cell.cell_type == "code"
              for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    for name in render.FIGURES[path.name]:
        png = figures / f"{name}.png"
        assert png.is_file(), f"{path.name} did not write {png.name}"
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, png.name


def _notebook(parameters_source="a = 1\nb: int = 2\n", tagged=True):
    cell = nbformat.v4.new_code_cell(parameters_source,
                                     metadata={"tags": ["parameters"]} if tagged else {})
    return nbformat.v4.new_notebook(cells=[cell, nbformat.v4.new_code_cell("print(a + b)")])


def test_parameters_go_right_after_the_parameters_cell():
    nb = inject_parameters(_notebook(), {"b": 5, "a": "x"})
    assert nb.cells[1].metadata["tags"] == ["injected-parameters"]
    assert "b = 5" in nb.cells[1].source and "a = 'x'" in nb.cells[1].source
    assert nb.cells[2].source == "print(a + b)"


def test_unknown_parameter_is_refused_by_name():
    with pytest.raises(NotebookError, match=r"unknown parameter\(s\) \['c'\]"):
        inject_parameters(_notebook(), {"c": 1}, "x.ipynb")


def test_parameters_without_a_parameters_cell_are_refused():
    with pytest.raises(NotebookError, match="no cell is tagged 'parameters'"):
        inject_parameters(_notebook(tagged=False), {"a": 1})


def test_failing_cell_names_the_notebook_and_cell(tmp_path):
    nb = _notebook()
    nb.cells.append(nbformat.v4.new_code_cell("raise ValueError('boom')"))
    path = tmp_path / "broken.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(NotebookError, match=r"broken.ipynb: cell 3 of 3 failed(.|\n)*boom"):
        execute(path, timeout=60)
