"""Which events fold into CR(u), CR(i) (`common.representations.cr_folding`)."""

import numpy as np
import pytest

from common.representations import cr_folding
from common.representations.tables import TableError


def test_fold_mask_reads_bytes_and_str():
    domains = np.array([b"ad", b"content", "ad", "content"], object)
    assert cr_folding.fold_mask(domains, cr_folding.AD).tolist() == [True, False, True, False]
    plain = np.array(["ad", "content"])  # numpy str, not object
    assert cr_folding.fold_mask(plain, cr_folding.AD).tolist() == [True, False]
    assert cr_folding.fold_mask(domains, cr_folding.ALL).all()
    with pytest.raises(TypeError, match="bytes or str"):
        cr_folding.fold_mask(np.array([1, 2]), cr_folding.AD)
    with pytest.raises(TableError, match="no 'domain' field"):
        cr_folding.select_events({"user_id": np.array([b"u"], object)}, cr_folding.AD)
