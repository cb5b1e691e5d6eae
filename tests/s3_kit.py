"""A real S3-protocol server on loopback for the object-storage tests, and plain helpers on it.

moto's standalone server speaks S3's HTTP protocol (real requests, real multipart uploads, in
memory). The engine reaches it only through the variables a user sets (``AWS_ENDPOINT_URL``,
the access keys, ``AWS_REGION``); the helpers here read and write the bucket with pyarrow's own
S3 filesystem, as a data team's reader would. The fixtures are in ``tests/conftest.py``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyarrow.dataset as ds
import pyarrow.fs as pafs

ACCESS_KEY = "AKIAIMG1688TESTKEY00"
SECRET_KEY = "img1688-test-secret-must-never-be-printed"
REGION = "us-east-1"


@contextmanager
def s3_server() -> Iterator[str]:
    """Start moto's S3 server on a free loopback port; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def aws_environment(endpoint: str) -> dict[str, str]:
    """The variables a user sets to reach an S3-compatible service at ``endpoint``."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": REGION,
        "AWS_ALLOW_HTTP": "true",  # deltalake refuses a plain-http endpoint without it
    }


def filesystem(endpoint: str) -> pafs.S3FileSystem:
    """pyarrow's S3 filesystem on the server, as a reader outside the engine would make it."""
    return pafs.S3FileSystem(
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        region=REGION,
        endpoint_override=endpoint,
        allow_bucket_creation=True,
    )


@dataclass(frozen=True)
class S3Bucket:
    """A fresh bucket on the test server. ``url`` is ``s3://<name>``; ``filesystem`` is
    pyarrow's S3 filesystem on the server (paths are ``<name>/<key>``)."""

    name: str
    url: str
    endpoint: str
    filesystem: pafs.S3FileSystem

    def path(self, key: str) -> str:
        return f"{self.name}/{key}".rstrip("/")

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under ``prefix``, sorted; "folder" markers left out."""
        selector = pafs.FileSelector(self.path(prefix), recursive=True, allow_not_found=True)
        return sorted(
            info.path.removeprefix(self.name + "/")
            for info in self.filesystem.get_file_info(selector)
            if info.type == pafs.FileType.File
        )

    def put(self, key: str, data: bytes) -> None:
        with self.filesystem.open_output_stream(self.path(key)) as stream:
            stream.write(data)

    def get(self, key: str) -> bytes:
        with self.filesystem.open_input_stream(self.path(key)) as stream:
            return bytes(stream.read())

    def exists(self, key: str) -> bool:
        return self.filesystem.get_file_info(self.path(key)).type == pafs.FileType.File

    def feed_rows(self, prefix: str, table: str) -> list[dict[str, Any]]:
        """The rows of a table (``images``, ``matches``) of the feed under ``prefix``, every run's,
        read with pyarrow's S3 filesystem as a data team's reader would."""
        dataset = ds.dataset(
            self.path(f"{prefix}/{table}"),
            filesystem=self.filesystem,
            format="parquet",
            partitioning="hive",
        )
        return dataset.to_table().to_pylist()


def new_bucket(endpoint: str) -> S3Bucket:
    """Create a bucket with a fresh name on the server at ``endpoint``."""
    fs = filesystem(endpoint)
    name = f"img1688-{uuid.uuid4().hex[:12]}"
    fs.create_dir(name)
    return S3Bucket(name, f"s3://{name}", endpoint, fs)
