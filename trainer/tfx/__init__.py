"""The TFX module files of the pipeline: the Transform's `preprocessing_fn`
(`transform_module`), the upstream Trainer's `run_fn` (`upstream_module`) and the ranker
Trainer's `run_fn` (`ranker_module`). The only modules of `trainer/` that may import
`tensorflow_transform`; none imports Beam or TFX."""
