"""The representation contract that the pipeline's components, the serving store and the
downstream models share: the time-aware EMA of paper Eq. 1-2 (`ema`) and the published table
format with its names (`tables`). Imports neither Beam nor the serving stack."""
