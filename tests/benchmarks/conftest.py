"""The fixtures the benchmark tests share with the tests of what they measure, imported from
those directories' conftest files (same data, exports and stores; made once per directory)."""

from tests.serving.conftest import examples, exported  # noqa: F401  (fixtures)
from tests.serving.store.conftest import store_url  # noqa: F401
from tests.trainer.conftest import small_data  # noqa: F401
from tests.trainer.downstream.conftest import downstream_data  # noqa: F401
