"""The representation contract that the pipeline's components, the serving store and the
downstream models share: the time-aware EMA of paper Eq. 1-2 (`ema`), the published table
format with its names (`tables`) and the monitoring statistics with the publish guard's
judgement (`statistics`, Sec. 4.3.2). Imports neither Beam nor the serving stack."""
