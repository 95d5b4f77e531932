"""The ground floor that every layer shares: the tf.Example schema (`features`), the SavedModel's
signature and feature names (`signatures`), the representation contract (`representations/`:
table format, the EMA of paper Eq. 1-2, the guard's statistics, which requests fold CRs), the
downstream ranker's request format (`downstream_requests`), the TF Serving directory layout
(`serving_layout`), the console set-up of every CLI (`console`), the CLIs' flags made from
dataclasses and their runner (`cli`: one `error:` line and exit 2 on a bad input, `--json`)
and the Keras-2 switch (`legacy_keras`). Imports nothing of ours and neither Beam, TFX nor the
serving stack."""

from common import legacy_keras  # noqa: F401  (must run before tensorflow is imported)
