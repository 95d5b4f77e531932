"""MovieLens-100K in the LFM4Ads tf.Example schema.

The data come from the PyPI wheel ``recbole==1.2.1``, which ships MovieLens-100K as RecBole
"atomic files" (tab-separated, typed headers such as ``user_id:token``) under
``recbole/dataset_example/ml-100k/``. The wheel is fetched with
``python -m pip download --no-deps --only-binary=:all: recbole==1.2.1`` into a cache directory
(``--cache_dir``, else ``$LFM4ADS_CACHE``, else ``~/.cache/lfm4ads``), checked against its
SHA-256 and read with ``zipfile``; recbole itself is never imported.

Mapping (one rating = one sample, in timestamp order):

* ``user_id`` ``u<id>``, ``item_id`` ``m<id>``, ``scenario`` ``movielens``;
* ``label`` = ``rating >= 4``; ``domain`` ``ad`` for the items with
  ``zlib.crc32(<MovieLens item id>) % 100 < 20`` (a fixed ~20% of the items), else ``content``;
  ``conversion`` = ``rating == 5`` for ad samples, 0 for content;
* ``user_age`` bucket 0..6 of the MovieLens-1M age groups (<18, 18-24, 25-34, 35-44, 45-49,
  50-55, 56+); ``user_gender`` ``m``/``f``; ``user_geo`` the US zip code's first digit (its
  national area: ``zip0`` .. ``zip9``, ``zipX`` for a non-numeric, e.g. Canadian, code);
* ``item_category`` the first genre, ``item_tags`` all genres (``unknown`` when none);
  ``item_advertiser`` ``adv<release year>`` for ad items (``adv_unknown`` without a year),
  empty for content;
* ``user_hist_items``: the user's ``label == 1`` items strictly before the rating's timestamp.

Usage::

    python -m pipelines.sources.movielens --out /tmp/ml100k --json
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common import cli, features
from pipelines.sources.example_encoder import BytesColumn, Column, IntColumn
from pipelines.sources.history import ragged_take, user_history
from pipelines.sources.output_dir import prepare_out_dir, to_json, write_manifest
from pipelines.sources.shards import write_examples

PACKAGE = "recbole==1.2.1"
WHEEL_NAME = "recbole-1.2.1-py3-none-any.whl"
WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
DATA_PREFIX = "recbole/dataset_example/ml-100k/ml-100k."
CACHE_ENV = "LFM4ADS_CACHE"
DEFAULT_CACHE = Path("~/.cache/lfm4ads")
SCENARIO = b"movielens"
AD_PERCENT = 20  # items with crc32(id) % 100 < AD_PERCENT are ads
AGE_EDGES = (18, 25, 35, 45, 50, 56)  # user_age = number of edges <= age
UNKNOWN_GENRE = "unknown"


class DatasetFetchError(RuntimeError):
    """The MovieLens wheel could not be downloaded (or is not the expected file)."""


def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The download cache: ``explicit``, else ``$LFM4ADS_CACHE``, else ``~/.cache/lfm4ads``."""
    chosen = explicit or os.environ.get(CACHE_ENV) or DEFAULT_CACHE
    return Path(chosen).expanduser()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_wheel(cache: str | os.PathLike | None = None, timeout_s: float = 600) -> Path:
    """Path of the ``recbole==1.2.1`` wheel in the cache, downloading it with pip if missing.

    Raises:
        DatasetFetchError: pip failed or timed out (the message names the package, the command
            and the end of pip's stderr), or the file's SHA-256 is not the known one.
    """
    directory = cache_dir(cache)
    wheel = directory / WHEEL_NAME
    if wheel.is_file() and _sha256(wheel) == WHEEL_SHA256:
        return wheel
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".download-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--progress-bar", "off", "--disable-pip-version-check", PACKAGE, "-d", tmp]
        shown = "python -m pip " + " ".join(command[3:-2]) + " -d " + str(directory)
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                                  check=False)
        except subprocess.TimeoutExpired as e:
            raise DatasetFetchError(
                f"could not fetch {PACKAGE}: `{shown}` timed out after {timeout_s:.0f} s"
            ) from e
        downloaded = Path(tmp) / WHEEL_NAME
        if done.returncode != 0 or not downloaded.is_file():
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
            raise DatasetFetchError(
                f"could not fetch {PACKAGE} (MovieLens-100K): `{shown}` exited with "
                f"{done.returncode}. pip said:\n{tail}"
            )
        digest = _sha256(downloaded)
        if digest != WHEEL_SHA256:
            raise DatasetFetchError(
                f"{PACKAGE}: downloaded {WHEEL_NAME} has SHA-256 {digest}, expected "
                f"{WHEEL_SHA256}"
            )
        downloaded.replace(wheel)
    return wheel


def read_atomic(archive: zipfile.ZipFile, suffix: str,
                required: Sequence[str]) -> dict[str, list[str]]:
    """Columns of the RecBole atomic file ``ml-100k.<suffix>`` in ``archive``.

    The header's ``name:type`` fields are keyed by ``name``; every value stays a string.

    Raises:
        ValueError: the file is missing from the archive or lacks a ``required`` column.
    """
    member = DATA_PREFIX + suffix
    try:
        text = archive.read(member).decode("utf-8", errors="replace")
    except KeyError:
        raise ValueError(f"{archive.filename}: no {member}; is it the {PACKAGE} wheel?") from None
    lines = text.splitlines()
    names = [field.split(":", 1)[0] for field in lines[0].split("\t")] if lines else []
    missing = [name for name in required if name not in names]
    if missing:
        raise ValueError(f"{member}: missing columns {missing}; header has {names}")
    rows = [line.split("\t") for line in lines[1:] if line.strip()]
    bad = next((i for i, row in enumerate(rows) if len(row) != len(names)), None)
    if bad is not None:
        raise ValueError(f"{member} line {bad + 2}: {len(rows[bad])} fields, expected "
                         f"{len(names)}")
    return {name: [row[i] for row in rows] for i, name in enumerate(names)}


def is_ad_item(item_id: str) -> bool:
    """Whether MovieLens item ``item_id`` (e.g. ``"242"``) is in the ad domain (~20%)."""
    return zlib.crc32(item_id.encode()) % 100 < AD_PERCENT


def age_bucket(age: np.ndarray) -> np.ndarray:
    """MovieLens-1M age group 0..6 of ``age`` (years): ``<18, 18-24, ..., 50-55, 56+``."""
    return np.searchsorted(np.array(AGE_EDGES), age, side="right")


def geo_of_zip(zip_code: str) -> str:
    """``zip<first digit>`` (US national area) or ``zipX`` for a non-numeric code."""
    head = zip_code.strip()[:1]
    return f"zip{head}" if head.isdigit() else "zipX"


def _encode(values: Sequence[str]) -> tuple[list[bytes], np.ndarray]:
    """``(vocab, indices)`` with ``vocab[indices[i]] == values[i]``, vocab sorted."""
    vocab, indices = np.unique(np.array(values, dtype=object), return_inverse=True)
    return [v.encode() for v in vocab], indices.astype(np.int64)


def build(wheel: str | os.PathLike) -> tuple[dict[str, Column], dict[str, Any]]:
    """Reads the wheel's MovieLens-100K and maps it to the schema's columns.

    Returns:
        ``(columns, facts)``: the columns in timestamp order (ties keep the file's order) and
        the manifest facts about them.
    """
    with zipfile.ZipFile(wheel) as archive:
        inter = read_atomic(archive, "inter", ("user_id", "item_id", "rating", "timestamp"))
        users = read_atomic(archive, "user", ("user_id", "age", "gender", "zip_code"))
        items = read_atomic(archive, "item", ("item_id", "release_year", "class"))
    timestamp = np.array([int(float(t)) for t in inter["timestamp"]], np.int64)
    order = np.argsort(timestamp, kind="stable")
    timestamp = timestamp[order]
    rating = np.array([float(r) for r in inter["rating"]])[order]
    user_raw = np.array(inter["user_id"], dtype=object)[order]
    item_raw = np.array(inter["item_id"], dtype=object)[order]
    n = len(timestamp)
    if n == 0:
        raise ValueError(f"{wheel}: {DATA_PREFIX}inter has no ratings")

    # Users: one row per user id seen in the ratings; unknown users get neutral values.
    user_ids, user = np.unique(user_raw, return_inverse=True)
    profile = {uid: (age, gender, zip_code) for uid, age, gender, zip_code in zip(
        users["user_id"], users["age"], users["gender"], users["zip_code"], strict=True)}
    known = [profile.get(uid, ("0", "", "")) for uid in user_ids]
    user_age = age_bucket(np.array([int(float(p[0] or 0)) for p in known]))
    gender_vocab, user_gender = _encode([p[1].strip().lower() for p in known])
    geo_vocab, user_geo = _encode([geo_of_zip(p[2]) if p[2] else "" for p in known])

    # Items: genres and release year; ad items chosen by hash.
    item_ids, item = np.unique(item_raw, return_inverse=True)
    info = dict(zip(items["item_id"], zip(items["class"], items["release_year"], strict=True),
                    strict=True))
    genres = [(info.get(i, ("", ""))[0].split() or [UNKNOWN_GENRE]) for i in item_ids]
    ad_item = np.array([is_ad_item(i) for i in item_ids])
    years = [info.get(i, ("", ""))[1].strip() for i in item_ids]
    category_vocab, item_category = _encode([g[0] for g in genres])
    advertiser_vocab, item_advertiser = _encode(
        [f"adv{y or '_unknown'}" if ad else "" for y, ad in zip(years, ad_item, strict=True)])
    tag_vocab, tag_values = _encode([g for gs in genres for g in gs])
    tag_offsets = np.zeros(len(item_ids) + 1, np.int64)
    np.cumsum([len(g) for g in genres], out=tag_offsets[1:])
    tags_offsets, tags = ragged_take(tag_offsets, tag_values, item)

    label = rating >= 4
    is_ad = ad_item[item]
    conversion = is_ad & (rating == 5)
    hist_offsets, hist = user_history(user, timestamp, item, label)
    item_vocab = [f"m{i}".encode() for i in item_ids]
    columns: dict[str, Column] = {
        features.USER_ID: BytesColumn([f"u{u}".encode() for u in user_ids], user),
        features.ITEM_ID: BytesColumn(item_vocab, item),
        features.DOMAIN: BytesColumn(
            [features.DOMAIN_CONTENT, features.DOMAIN_AD], is_ad.astype(np.int64)),
        features.SCENARIO: BytesColumn([SCENARIO], np.zeros(n, np.int64)),
        features.TIMESTAMP: IntColumn(timestamp),
        features.USER_AGE: IntColumn(user_age[user]),
        features.USER_GENDER: BytesColumn(gender_vocab, user_gender[user]),
        features.USER_GEO: BytesColumn(geo_vocab, user_geo[user]),
        features.USER_HIST_ITEMS: BytesColumn(item_vocab, hist, hist_offsets),
        features.ITEM_CATEGORY: BytesColumn(category_vocab, item_category[item]),
        features.ITEM_TAGS: BytesColumn(tag_vocab, tags, tags_offsets),
        features.ITEM_ADVERTISER: BytesColumn(advertiser_vocab, item_advertiser[item]),
        features.LABEL: IntColumn(label.astype(np.int64)),
        features.CONVERSION: IntColumn(conversion.astype(np.int64)),
    }
    facts = {
        "counts": {"content": int((~is_ad).sum()), "ad": int(is_ad.sum())},
        "time_range": {"min": int(timestamp[0]), "max": int(timestamp[-1])},
        "users": len(user_ids),
        "items": {"content": int((~ad_item).sum()), "ad": int(ad_item.sum())},
        "label_rate": {"content": float(label[~is_ad].mean()) if (~is_ad).any() else None,
                       "ad": float(label[is_ad].mean()) if is_ad.any() else None},
        "conversion_rate_ad": float(conversion[is_ad].mean()) if is_ad.any() else None,
        "mean_history_length": float(hist_offsets[-1] / n),
    }
    return columns, facts


MAPPING = {
    "label": "rating >= 4",
    "domain": f"ad if zlib.crc32(movielens item id) % 100 < {AD_PERCENT}, else content",
    "conversion": "rating == 5 for ad samples, 0 for content",
    "user_age": "MovieLens-1M age group: <18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+ -> 0..6",
    "user_geo": "zip<first digit of the zip code>, zipX when not a digit",
    "item_category": "first genre",
    "item_tags": "all genres",
    "item_advertiser": "adv<release year> for ad items, empty for content",
    "scenario": SCENARIO.decode(),
}


def convert(
    out_dir: str | os.PathLike,
    cache: str | os.PathLike | None = None,
    wheel: str | os.PathLike | None = None,
    num_shards: int | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Writes MovieLens-100K as shards + ``manifest.json`` in ``out_dir``.

    Args:
        out_dir: output directory; must be missing or empty unless ``overwrite``.
        cache: download cache (see ``cache_dir``).
        wheel: a local recbole wheel to read instead of fetching one.
        num_shards: shards to write; default ``shards.default_num_shards``.
        workers: processes writing shards.
        overwrite: replace a previous run's files in ``out_dir``.
        progress: tqdm progress bar on stderr.

    Returns:
        The manifest.
    """
    started = time.perf_counter()
    out = prepare_out_dir(out_dir, overwrite)
    wheel_path = Path(wheel) if wheel is not None else fetch_wheel(cache)
    columns, facts = build(wheel_path)
    examples = len(columns[features.LABEL])
    shards = write_examples(out, columns, num_shards, workers, progress)
    seconds = time.perf_counter() - started
    manifest = {
        "source": "movielens-100k",
        "package": PACKAGE,
        "wheel": wheel_path.name,
        "examples": examples,
        "shards": shards,
        **facts,
        "mapping": MAPPING,
        "seconds": round(seconds, 3),
        "examples_per_second": round(examples / seconds, 1),
    }
    write_manifest(out, manifest)
    return manifest


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; see the module docstring."""
    parser = cli.ArgumentParser(
        prog="python -m pipelines.sources.movielens",
        description="Writes MovieLens-100K (from the recbole==1.2.1 wheel) as LFM4Ads shards.")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--cache_dir", default=None,
                        help=f"download cache (default ${CACHE_ENV} or {DEFAULT_CACHE})")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a previous run's files in a non-empty --out")
    args = parser.parse_args(argv)

    def write() -> dict[str, Any]:
        try:
            return convert(args.out, cache=args.cache_dir, overwrite=args.overwrite)
        except FileExistsError as e:
            cli.fail(str(e))

    def summary(manifest: dict[str, Any]) -> str:
        counts, items = manifest["counts"], manifest["items"]
        return (f"wrote {manifest['examples']} examples ({counts['content']} content, "
                f"{counts['ad']} ad; {items['ad']} of {sum(items.values())} items are ads) to "
                f"{args.out} in {len(manifest['shards'])} shards, {manifest['seconds']:.1f} s")

    # a failed download is no input error: exit 1, with pip's own report
    return cli.run(write, args, show=summary, exit_codes={DatasetFetchError: 1},
                   to_json=to_json)


if __name__ == "__main__":
    sys.exit(main())
