"""The benchmarks' data sets, generated or converted once into a cache directory."""

from __future__ import annotations

import os

DATASETS = ("synthetic", "movielens")


def prepare(dataset: str, cache: str, examples: int = 200_000, seed: int = 1,
            world: str = "two_tower") -> str:
    """The directory of `dataset` (`synthetic`: the simulator's 14 days of `examples` rows with
    `seed` in its world `world`, a name of `synthetic.WORLDS`; `movielens`: MovieLens-100K),
    made under `cache` when it is not there yet. Each world has its own directory (`two_tower`
    keeps the name it had before worlds existed); MovieLens has one world and ignores `world`,
    so one call can loop over both data sets."""
    if dataset == "synthetic":
        from pipelines.sources import synthetic

        synthetic.resolve_world(world)  # an unknown name fails here, naming the worlds
        name = f"synthetic-{examples}-seed{seed}"
        if world != synthetic.DEFAULT_WORLD:
            name = f"synthetic-{world}-{examples}-seed{seed}"
        data = os.path.join(cache, name)
        if not os.path.exists(os.path.join(data, "manifest.json")):
            synthetic.generate(data, examples=examples, seed=seed, days=14, overwrite=True,
                               progress=False, world=world)
        return data
    if dataset == "movielens":
        from pipelines.sources import movielens

        data = os.path.join(cache, "movielens-100k")
        if not os.path.exists(os.path.join(data, "manifest.json")):
            movielens.convert(data, overwrite=True, progress=False)
        return data
    raise ValueError(f"unknown dataset {dataset!r}; one of {DATASETS}")
