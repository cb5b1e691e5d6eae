"""Discovery: every matching file once, in a stable order, whatever the folder holds."""

from __future__ import annotations

import os
from pathlib import Path

from engine.discover import Candidate, DiscoveryReport, discover
from engine.jobfile import Inputs


async def walk(inputs: Inputs) -> tuple[list[str], DiscoveryReport]:
    report = DiscoveryReport()
    found = [str(c.path) async for c in discover(inputs, report)]
    return found, report


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


async def test_extensions_recursion_excludes_and_order(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    b = touch(root / "b.JPG")
    a = touch(root / "a.png")
    touch(root / "notes.txt")
    nested = touch(root / "sub" / "c.webp")
    touch(root / "thumbs" / "small.jpg")
    touch(root / "sub" / "thumbs" / "small.jpg")

    found, _ = await walk(Inputs(paths=(root,), exclude=("**/thumbs/*",)))
    flat, _ = await walk(Inputs(paths=(root,), recursive=False))

    assert found == [str(a), str(b), str(nested)]
    assert flat == [str(a), str(b)]


async def test_symlink_loops_and_duplicate_roots_are_cut(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    photo = touch(root / "sub" / "p.jpg")
    os.symlink(root, root / "sub" / "loop")

    found, report = await walk(Inputs(paths=(root, root / "sub")))

    assert found == [str(photo)]
    assert report.symlink_loops >= 1


async def test_dangling_links_missing_inputs_and_explicit_files(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    good = touch(root / "ok.jpg")
    os.symlink(tmp_path / "gone.jpg", root / "dangling.jpg")
    explicit = touch(tmp_path / "odd-name.dat")

    found, report = await walk(Inputs(paths=(root, tmp_path / "nope", explicit, good)))

    assert found == [str(explicit), str(good)]  # named files first, each file once
    assert any("dangling.jpg" in entry for entry in report.unreadable)
    assert report.missing_inputs == [str(tmp_path / "nope")]


async def test_links_are_skipped_when_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    real = touch(tmp_path / "elsewhere" / "x.jpg")
    root.mkdir()
    os.symlink(real, root / "x.jpg")

    followed, _ = await walk(Inputs(paths=(root,)))
    skipped, _ = await walk(Inputs(paths=(root,), follow_symlinks=False))

    assert followed == [str(root / "x.jpg")]
    assert skipped == []


def test_a_catalogue_photo_url_is_one_in_any_case_of_its_scheme_and_never_shown_signed() -> None:
    for url in ("https://shop.example/a.jpg?sig=SECRET", "HTTPS://shop.example/a.jpg?sig=SECRET"):
        photo = Candidate(url, 0, 0, sku="A-1")
        assert photo.is_url, url
        assert photo.source is not None and "SECRET" not in photo.source
    on_s3 = Candidate("s3://bucket/a.jpg", 1, 1, etag='"e"')
    assert not on_s3.is_url
