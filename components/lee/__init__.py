"""The Light-weight Embedding Evaluator (paper Sec. 4.3.3): a candidate representation version
goes live only when a proxy downstream model does at least as well with it as with the live one."""

from common import legacy_keras  # noqa: F401  (must run before tensorflow is imported)

# isort: split
from components.lee.evaluator import LeeConfig, evaluate, served_features, table_source

__all__ = ["LeeConfig", "evaluate", "served_features", "table_source"]
