"""The benchmarks' data sets, generated or converted once into a cache directory."""

from __future__ import annotations

import os

DATASETS = ("synthetic", "movielens")


def prepare(dataset: str, cache: str, examples: int = 200_000, seed: int = 1) -> str:
    """The directory of `dataset` (`synthetic`: the simulator's 14 days of `examples` rows with
    `seed`; `movielens`: MovieLens-100K), made under `cache` when it is not there yet."""
    if dataset == "synthetic":
        from pipelines.sources import synthetic

        data = os.path.join(cache, f"synthetic-{examples}-seed{seed}")
        if not os.path.exists(os.path.join(data, "manifest.json")):
            synthetic.generate(data, examples=examples, seed=seed, days=14, overwrite=True,
                               progress=False)
        return data
    if dataset == "movielens":
        from pipelines.sources import movielens

        data = os.path.join(cache, "movielens-100k")
        if not os.path.exists(os.path.join(data, "manifest.json")):
            movielens.convert(data, overwrite=True, progress=False)
        return data
    raise ValueError(f"unknown dataset {dataset!r}; one of {DATASETS}")
