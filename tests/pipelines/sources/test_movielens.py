"""Tests of the MovieLens-100K source: mapping on a fake wheel, the real wheel, fetch errors."""

from __future__ import annotations

import os
import subprocess
import time
import zipfile

import numpy as np
import pytest

from common import features
from pipelines.sources import movielens
from pipelines.sources.shards import SHARD_PATTERN

from .test_synthetic import parse, read_records

USERS = """user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token
1\t24\tM\ttechnician\t85711
2\t53\tF\tother\t94043
3\t17\tM\tstudent\tT8H1N
"""
# crc32(id) % 100: "1" -> 83, "2" -> 37 (content); "3" -> 11, "4" -> 8 (ads).
ITEMS = """item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq
1\tToy Story\t1995\tAnimation Children's Comedy
2\tGoldenEye\t1995\tAction Adventure Thriller
3\tFour Rooms\t1995\tThriller
4\tGet Shorty\t\tAction Comedy Drama
"""
# File order is not time order; several ties in time.
RATINGS = """user_id:token\titem_id:token\trating:float\ttimestamp:float
1\t3\t5\t300
1\t1\t4\t100
2\t4\t3\t100
1\t2\t5\t200
1\t4\t4\t200
2\t1\t5\t100
2\t3\t4\t150
3\t2\t1\t50
"""


def fake_wheel(path, files=None):
    """A zip with the wheel's three ml-100k atomic files (or ``files``: suffix -> text)."""
    files = files if files is not None else {"user": USERS, "item": ITEMS, "inter": RATINGS}
    with zipfile.ZipFile(path, "w") as archive:
        for suffix, text in files.items():
            archive.writestr(movielens.DATA_PREFIX + suffix, text)
    return path


@pytest.fixture
def converted(tmp_path):
    out = tmp_path / "out"
    manifest = movielens.convert(out, wheel=fake_wheel(tmp_path / "fake.whl"), progress=False)
    return manifest, parse(read_records(out, manifest))


def test_mapping_of_a_tiny_wheel(converted):
    manifest, rows = converted
    # Sorted by time, ties in file order:
    #   t=50 u3 m2 r1 | t=100 u1 m1 r4, u2 m4 r3, u2 m1 r5 | t=150 u2 m3 r4
    #   t=200 u1 m2 r5, u1 m4 r4 | t=300 u1 m3 r5
    assert rows[features.TIMESTAMP].tolist() == [50, 100, 100, 100, 150, 200, 200, 300]
    assert rows[features.USER_ID].tolist() == [b"u3", b"u1", b"u2", b"u2", b"u2", b"u1", b"u1",
                                               b"u1"]
    assert rows[features.ITEM_ID].tolist() == [b"m2", b"m1", b"m4", b"m1", b"m3", b"m2", b"m4",
                                               b"m3"]
    assert rows[features.LABEL].tolist() == [0, 1, 0, 1, 1, 1, 1, 1]  # rating >= 4
    ad = [False, False, True, False, True, False, True, True]  # items 3 and 4
    assert rows[features.DOMAIN].tolist() == [b"ad" if a else b"content" for a in ad]
    assert rows[features.CONVERSION].tolist() == [0, 0, 0, 0, 0, 0, 0, 1]  # ad and rating 5
    assert set(rows[features.SCENARIO]) == {b"movielens"}
    # Users: 24 -> 18-24 (1), 53 -> 50-55 (5), 17 -> <18 (0); zip 85711 -> zip8, T8H1N -> zipX.
    user = {b"u1": (1, b"m", b"zip8"), b"u2": (5, b"f", b"zip9"), b"u3": (0, b"m", b"zipX")}
    for i, uid in enumerate(rows[features.USER_ID]):
        got = (rows[features.USER_AGE][i], rows[features.USER_GENDER][i],
               rows[features.USER_GEO][i])
        assert got == user[uid], uid
    item = {
        b"m1": (b"Animation", [b"Animation", b"Children's", b"Comedy"], b""),
        b"m2": (b"Action", [b"Action", b"Adventure", b"Thriller"], b""),
        b"m3": (b"Thriller", [b"Thriller"], b"adv1995"),
        b"m4": (b"Action", [b"Action", b"Comedy", b"Drama"], b"adv_unknown"),  # no year
    }
    for i, iid in enumerate(rows[features.ITEM_ID]):
        got = (rows[features.ITEM_CATEGORY][i], rows[features.ITEM_TAGS][i],
               rows[features.ITEM_ADVERTISER][i])
        assert got == item[iid], iid
    # Positives strictly before t, newest first (the later row first within a second).
    assert rows[features.USER_HIST_ITEMS] == [
        [], [], [], [],  # u2's t=100 rows do not see each other
        [b"m1"],  # u2 at 150
        [b"m1"], [b"m1"],  # u1 at 200: not the other t=200 row
        [b"m4", b"m2", b"m1"],  # u1 at 300
    ]
    assert manifest["counts"] == {"content": 4, "ad": 4}
    assert manifest["items"] == {"content": 2, "ad": 2} and manifest["users"] == 3
    assert manifest["time_range"] == {"min": 50, "max": 300}
    assert "oracle_auc_ad" not in manifest


def test_missing_column_and_missing_file_are_clear_errors(tmp_path):
    broken = RATINGS.replace("rating:float", "score:float")
    wheel = fake_wheel(tmp_path / "a.whl", {"user": USERS, "item": ITEMS, "inter": broken})
    with pytest.raises(ValueError, match=r"ml-100k.inter: missing columns \['rating'\]"):
        movielens.build(wheel)
    wheel = fake_wheel(tmp_path / "b.whl", {"user": USERS, "item": ITEMS})
    with pytest.raises(ValueError, match="no recbole/dataset_example/ml-100k/ml-100k.inter"):
        movielens.build(wheel)


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv(movielens.CACHE_ENV, str(tmp_path / "env"))
    assert movielens.cache_dir(tmp_path / "arg") == tmp_path / "arg"
    assert movielens.cache_dir() == tmp_path / "env"
    monkeypatch.delenv(movielens.CACHE_ENV)
    assert movielens.cache_dir() == movielens.DEFAULT_CACHE.expanduser()


def test_real_wheel_gives_100k_examples_and_20_percent_ad_items(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    out = tmp_path / "ml"
    manifest = movielens.convert(out, cache=cache, progress=False)
    assert manifest["examples"] == 100_000
    assert sum(manifest["counts"].values()) == 100_000
    assert manifest["users"] == 943
    assert sum(manifest["items"].values()) == 1682
    ad_share = manifest["items"]["ad"] / 1682
    assert 0.17 < ad_share < 0.23
    rows = parse(read_records(out, manifest))
    assert len(rows[features.LABEL]) == 100_000
    is_ad = rows[features.DOMAIN] == features.DOMAIN_AD
    assert int(is_ad.sum()) == manifest["counts"]["ad"]
    assert np.all(np.diff(rows[features.TIMESTAMP]) >= 0)
    assert all(len(h) <= features.MAX_HISTORY for h in rows[features.USER_HIST_ITEMS])
    # The wheel is cached: a second fetch does not run pip.
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip ran again"))
    assert movielens.fetch_wheel(cache) == cache / movielens.WHEEL_NAME


def test_fetch_failure_names_package_command_and_pip_output(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens there
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    started = time.perf_counter()
    with pytest.raises(movielens.DatasetFetchError) as error:
        movielens.fetch_wheel(tmp_path / "cache")
    assert time.perf_counter() - started < 60
    message = str(error.value)
    assert "recbole==1.2.1" in message
    assert "python -m pip download --no-deps" in message
    assert "No matching distribution found for recbole==1.2.1" in message  # pip's stderr
    assert not list((tmp_path / "cache").glob("*.whl"))
    # The command line reports it on stderr and exits 1.
    code = movielens.main(["--out", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "c")])
    assert code == 1
    assert capsys.readouterr().err.startswith("error: could not fetch recbole==1.2.1")


def test_out_dir_must_be_empty_without_overwrite(tmp_path):
    wheel = fake_wheel(tmp_path / "fake.whl")
    out = tmp_path / "out"
    movielens.convert(out, wheel=wheel, progress=False)
    with pytest.raises(FileExistsError, match="is not empty; pass --overwrite"):
        movielens.convert(out, wheel=wheel, progress=False)
    manifest = movielens.convert(out, wheel=wheel, overwrite=True, progress=False)
    assert sorted(p.name for p in out.glob(SHARD_PATTERN)) == manifest["shards"]
