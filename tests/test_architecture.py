"""The import rules of docs/ARCHITECTURE.md hold (import-linter's contracts in pyproject.toml),
and the check catches a broken rule."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINT = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def _lint(config: str) -> subprocess.CompletedProcess:
    return subprocess.run([LINT, "--config", config, "--no-cache"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_the_import_rules_hold():
    result = _lint(os.path.join(ROOT, "pyproject.toml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert ", 0 broken" in result.stdout


def test_a_broken_rule_is_reported(tmp_path):
    """The layers reversed (the components may not import the serving store, which the
    publishing module does to load a published version): the check must fail and name the
    import."""
    config = tmp_path / "reversed.toml"
    config.write_text(
        '[tool.importlinter]\nroot_packages = ["components", "serving"]\n\n'
        '[[tool.importlinter.contracts]]\nname = "reversed"\ntype = "layers"\n'
        'layers = ["serving", "components"]\n')
    result = _lint(str(config))
    assert result.returncode != 0
    assert "components.publishing -> serving.store" in result.stdout
