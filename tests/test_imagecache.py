"""The content-addressed image cache: blobs on disk, the URL index and derived blobs in SQLite,
shared across instances, threads and processes."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from engine.errors import StorageError
from engine.imagecache import ImageCache, UrlEntry
from tests.job_kit import image_files
from tests.paths import REPO


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[ImageCache]:
    with ImageCache(tmp_path / "cache") as opened:
        yield opened


def test_put_stores_the_bytes_under_their_sha256_once(cache: ImageCache) -> None:
    data = b"\xff\xd8\xff" + os.urandom(5000)
    sha = cache.put(data)

    assert sha == hashlib.sha256(data).hexdigest()
    blob = cache.root / "blobs" / sha[:2] / sha
    assert cache.path(sha) == blob
    assert blob.read_bytes() == data
    assert cache.read(sha) == data
    assert cache.put(data) == sha  # idempotent
    # Nothing but the blob: no temporary file left beside it, no second copy.
    assert image_files(cache.root / "blobs") == [blob]


def test_a_missing_blob_is_none_and_a_bad_name_is_refused(cache: ImageCache) -> None:
    absent = hashlib.sha256(b"never stored").hexdigest()
    assert cache.path(absent) is None
    assert cache.read(absent) is None
    for bad in ("../../index.sqlite", absent.upper(), absent[:-1], ""):
        with pytest.raises(ValueError, match="SHA-256"):
            cache.path(bad)
    with pytest.raises(ValueError, match="SHA-256"):
        cache.remember_url(UrlEntry("http://h/x", "../x", None, None, 1.0))


def test_a_damaged_blob_reads_as_missing_and_is_restored_by_the_next_put(
    cache: ImageCache,
) -> None:
    data = b"the real bytes"
    sha = cache.put(data)
    blob = cache.path(sha)
    assert blob is not None
    blob.write_bytes(b"the real byt")  # cut short by a copy that was not atomic

    assert cache.read(sha) is None
    assert cache.path(sha) is None
    assert cache.put(data) == sha
    assert cache.read(sha) == data


def test_a_failed_write_leaves_no_file_behind(tmp_path: Path) -> None:
    """A disk that refuses the write midway (a file size limit, as a full disk does): a
    StorageError, and neither the blob nor its temporary file stays."""
    root = tmp_path / "cache"
    ImageCache(root).close()
    script = textwrap.dedent(
        """
        import resource, signal, sys
        from pathlib import Path
        from engine.errors import StorageError
        from engine.imagecache import ImageCache

        cache = ImageCache(Path(sys.argv[1]))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
        try:
            cache.put(b"x" * 100_000)
        except StorageError as exc:
            print("StorageError:", exc)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(root)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.startswith("StorageError: cannot write to the image cache"), done
    assert image_files(root / "blobs") == []


def test_the_url_index_and_derived_blobs_survive_into_another_instance(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    entry = UrlEntry("https://cdn.example/a.jpg", "", '"v1"', "Mon, 01 Jan 2024 00:00:00 GMT", 5.5)
    with ImageCache(root) as first:
        entry = replace(entry, sha256=first.put(b"image bytes"))
        first.remember_url(entry)
        first.put_derived("fingerprint-v1", entry.sha256, b"\x01\x02")

    with ImageCache(root) as second:  # the next run
        assert second.url_entry(entry.url) == entry
        assert second.read(entry.sha256) == b"image bytes"
        assert second.derived("fingerprint-v1", entry.sha256) == b"\x01\x02"
        assert second.derived("fingerprint-v2", entry.sha256) is None
        assert second.url_entry("https://cdn.example/other.jpg") is None


def test_remembering_a_url_again_replaces_its_entry(cache: ImageCache) -> None:
    old = UrlEntry("http://h/p.jpg", cache.put(b"old"), '"1"', None, 1.0)
    new = UrlEntry("http://h/p.jpg", cache.put(b"new"), None, "Tue, 02 Jan 2024 00:00:00 GMT", 2.0)
    cache.remember_url(old)
    cache.remember_url(new)
    assert cache.url_entry("http://h/p.jpg") == new
    cache.put_derived("k", "x", b"1")
    cache.put_derived("k", "x", b"2")
    assert cache.derived("k", "x") == b"2"


def photo(cache: ImageCache, sha256: str) -> bytes | None:
    blob = cache.photo_path(sha256)
    return None if blob is None else blob.read_bytes()


def test_a_photo_is_the_jpeg_sent_for_it_else_its_own_bytes(cache: ImageCache) -> None:
    web_photo, sent = b"the downloaded photo", b"the JPEG sent for it"
    photo_sha = cache.put(web_photo)
    assert photo(cache, photo_sha) == web_photo
    cache.keep_sent(photo_sha, sent)
    assert photo(cache, photo_sha) == sent
    local_sha = "ab" * 32  # a local file's: only its JPEG is here
    assert photo(cache, local_sha) is None
    cache.keep_sent(local_sha, sent)
    assert photo(cache, local_sha) == sent


def test_two_instances_open_at_once_see_each_others_writes(tmp_path: Path) -> None:
    with ImageCache(tmp_path / "c") as one, ImageCache(tmp_path / "c") as two:
        entry = UrlEntry("http://h/1", one.put(b"1"), None, None, 1.0)
        one.remember_url(entry)
        assert two.url_entry("http://h/1") == entry
        assert two.read(entry.sha256) == b"1"


def test_processes_writing_at_once_all_land(tmp_path: Path) -> None:
    """Two processes writing the index and the same blobs at the same time: WAL and the busy
    timeout make every write land, none fails as "database is locked"."""
    root = tmp_path / "cache"
    ImageCache(root).close()
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from engine.imagecache import ImageCache, UrlEntry

        with ImageCache(Path(sys.argv[1])) as cache:
            for i in range(300):
                sha = cache.put(b"shared %d" % (i % 10))
                cache.remember_url(UrlEntry(f"http://h/{sys.argv[2]}/{i}", sha, None, None, i))
        """
    )
    workers = [
        subprocess.Popen([sys.executable, "-c", script, str(root), name], cwd=REPO)
        for name in ("a", "b")
    ]
    assert [worker.wait() for worker in workers] == [0, 0]
    with ImageCache(root) as cache:
        for name in ("a", "b"):
            entry = cache.url_entry(f"http://h/{name}/299")
            assert entry is not None
            assert cache.read(entry.sha256) == b"shared 9"
        db = sqlite3.connect(root / "index.sqlite")
        assert db.execute("SELECT count(*) FROM urls").fetchone()[0] == 600
        db.close()
    assert len(image_files(root / "blobs")) == 10


def test_each_thread_has_its_own_connection_and_close_closes_them_all(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache")
    errors: list[BaseException] = []

    def exporter() -> None:  # the pipeline's one worker thread
        try:
            sha = cache.put(b"from the worker")
            cache.put_derived("fingerprint-v1", sha, b"fp")
            cache.remember_url(UrlEntry("http://h/w", sha, None, None, 1.0))
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=exporter)
    worker.start()
    worker.join()
    assert errors == []
    entry = cache.url_entry("http://h/w")  # the event loop's thread reads what it wrote
    assert entry is not None
    assert cache.derived("fingerprint-v1", entry.sha256) == b"fp"

    cache.close()  # closes the worker's connection too, from this thread
    cache.close()
    with pytest.raises(RuntimeError, match="closed"):
        cache.url_entry("http://h/w")


def test_an_unusable_root_or_index_is_a_storage_error(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    with pytest.raises(StorageError, match="cannot create the image cache"):
        ImageCache(a_file)

    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "index.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError, match="not a SQLite database"):
        ImageCache(garbage)

    newer = tmp_path / "newer"
    ImageCache(newer).close()
    db = sqlite3.connect(newer / "index.sqlite")
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(StorageError, match="cache version 99"):
        ImageCache(newer)


def test_a_first_version_index_loses_its_raw_urls_and_keeps_its_blobs(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    root.mkdir()
    db = sqlite3.connect(root / "index.sqlite")  # as version 1 wrote it: URLs as given
    db.executescript(
        "CREATE TABLE urls (url TEXT PRIMARY KEY, sha256 TEXT NOT NULL, etag TEXT,"
        " last_modified TEXT, fetched_at REAL NOT NULL);"
        "INSERT INTO urls VALUES ('https://cdn/x.jpg?sig=SECRET', 'ab', NULL, NULL, 0);"
        "PRAGMA user_version=1;"
    )
    db.close()
    with ImageCache(root) as cache:
        sha = cache.put(b"\xff\xd8\xff blob")
        assert cache.url_entry("https://cdn/x.jpg?sig=SECRET") is None
        cache.remember_url(UrlEntry("https://cdn/x.jpg?sig=SECRET", sha, None, None, 1.0))
        entry = cache.url_entry("https://cdn/x.jpg?sig=SECRET")
        assert entry is not None and entry.sha256 == sha
    assert b"SECRET" not in (root / "index.sqlite").read_bytes()
