"""Beam writer of the published representation tables (format: `common.representations.tables`).
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes

from common.representations.tables import FILE_SUFFIX, encode_row


def _encode_element(element: tuple, model_version: int) -> bytes:
    key, vector, updated_at = element
    return encode_row(key, vector, updated_at, model_version)


class WriteRepresentationTable(beam.PTransform):
    """Writes `(key, vector float [d], updated_at int)` elements as a representation table.

    Output: PCollection of the written file names. Rows are not deduplicated: the input must
    hold one element per key (e.g. the output of `ExtractRepresentations` or
    `AggregateCrossRepresentations`).
    """

    def __init__(self, file_path_prefix: str, model_version: int, num_shards: int = 0):
        super().__init__()
        self._prefix = file_path_prefix
        self._model_version = int(model_version)
        self._num_shards = num_shards

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return (
            pcoll
            | "Encode" >> beam.Map(_encode_element, self._model_version)
            | "Write" >> beam.io.WriteToTFRecord(
                self._prefix,
                file_name_suffix=FILE_SUFFIX,
                num_shards=self._num_shards,
                compression_type=CompressionTypes.GZIP,
            )
        )
