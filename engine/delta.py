"""Delta Lake tables: ``output.format = "delta"`` publishes each completed run into
``OUT/matches``, ``OUT/images`` and ``OUT/changes`` as Delta tables (the ``deltalake`` package,
delta-rs: no JVM; the optional extra ``img1688[delta]``).

The engine still writes its parts exactly once through the checkpoints, under ``OUT/_staging/``;
only a completed run is committed, one commit per table, with the same Arrow schema plus a
``run_date`` column (``date``; the Parquet layout keeps it in folder names only) that
partitions the table. Each commit replaces the table's rows of that ``run_date`` in the same
commit (``mode="overwrite"`` with a ``predicate``), as a later run of the same day replaces the
earlier one's parts in the Parquet layout; schema changes (added columns) merge.

A commit carries an application transaction (``app_id`` naming the output, the run and the
table): delta-rs records it but does not skip a replayed commit by itself, so
:meth:`DeltaTables.commit` checks ``transaction_version(app_id)`` first. A kill between a
commit and the checkpoints recording it therefore never commits the run twice.

One writer per table: delta-rs has no lock of its own on object storage
(``AWS_S3_ALLOW_UNSAFE_RENAME``), so a sharded job (several writers) is refused.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

from engine.errors import ConfigError, StorageError
from engine.feed import TABLES
from engine.jobfile import DEFAULT_TARGET_FILE_MB
from engine.state import Run
from engine.storage import Store

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs
    from deltalake import DeltaTable

DELTA_TABLES = TABLES
RUN_DATE = "run_date"
TRANSACTION_VERSION = 1
"""The version every run's transactions carry: the ``app_id`` is unique to the run and table,
so "recorded at all" is "committed"."""


def require_deltalake() -> None:
    """Check that the ``deltalake`` package can be imported.

    Raises:
        ConfigError: it cannot; the message says what to install.
    """
    try:
        import deltalake  # noqa: F401
    except ImportError:
        raise ConfigError(
            'output.format = "delta" needs the deltalake package: pip install "img1688[delta]"'
            ' (or set output.format = "parquet")'
        ) from None


@dataclass(frozen=True)
class DeltaTables:
    """The Delta tables of one output (a local folder or an ``s3://`` URL)."""

    store: Store
    zstd_level: int = 6
    target_file_mb: int = DEFAULT_TARGET_FILE_MB

    def uri(self, kind: str) -> str:
        return f"{self.store.url.rstrip('/')}/{kind}"

    def app_id(self, run_id: str, kind: str) -> str:
        """The application transaction id of ``run_id``'s commit to table ``kind``."""
        return f"img1688:{self.store.url.rstrip('/')}:{run_id}:{kind}"

    def committed(self, run_id: str, kind: str) -> bool:
        """Whether run ``run_id`` is committed to table ``kind`` (its transaction is recorded).

        Raises:
            StorageError: the table exists but cannot be read.
        """
        table = self._open(kind)
        return table is not None and self._recorded(table, run_id, kind)

    def _recorded(self, table: DeltaTable, run_id: str, kind: str) -> bool:
        return table.transaction_version(self.app_id(run_id, kind)) is not None

    def commit(
        self, run: Run, kind: str, schema: pa.Schema, batches: Iterator[pa.RecordBatch]
    ) -> bool:
        """Replace table ``kind``'s rows of ``run.run_date`` by ``batches`` (of ``schema``, the
        run's rows), in one commit that records the run's transaction; streamed, one batch in
        memory at a time. Does nothing if that transaction is already recorded.

        Returns:
            Whether a commit was made (``False``: it had been made before).

        Raises:
            StorageError: the table cannot be read or written.
        """
        import pyarrow as pa
        from deltalake import CommitProperties, Transaction, WriterProperties, write_deltalake
        from deltalake.exceptions import DeltaError

        table = self._open(kind)  # written through, not opened again by deltalake
        if table is not None and self._recorded(table, run.run_id, kind):
            return False
        day = date.fromisoformat(run.run_date)
        dated = schema.append(pa.field(RUN_DATE, pa.date32(), nullable=False))

        def with_date() -> Iterator[pa.RecordBatch]:
            for batch in batches:
                column = pa.array([day] * batch.num_rows, pa.date32())
                yield pa.RecordBatch.from_arrays([*batch.columns, column], schema=dated)

        try:
            write_deltalake(
                self.uri(kind) if table is None else table,
                pa.RecordBatchReader.from_batches(dated, with_date()),
                mode="overwrite",
                predicate=f"{RUN_DATE} = '{day.isoformat()}'",
                partition_by=[RUN_DATE],
                schema_mode="merge",
                storage_options=self.store.storage_options(),
                target_file_size=self.target_file_mb * 1024 * 1024,
                writer_properties=WriterProperties(
                    compression="ZSTD", compression_level=self.zstd_level
                ),
                commit_properties=CommitProperties(
                    app_transactions=[
                        Transaction(self.app_id(run.run_id, kind), TRANSACTION_VERSION)
                    ]
                ),
            )
        except (DeltaError, OSError) as exc:
            raise StorageError(
                f"cannot commit run {run.run_id} to {self.uri(kind)}: {exc}"
            ) from None
        return True

    def published(self, run: Run, kind: str) -> tuple[int | None, int]:
        """Table ``kind``'s latest version and how many rows ``run`` has in it, from one
        opening; ``(None, 0)`` if there is no such table.

        Raises:
            StorageError: the table exists but cannot be read.
        """
        import pyarrow as pa

        table = self._open(kind)
        if table is None:
            return None, 0
        dataset, only = self._of_run(table, run, kind)
        try:
            return table.version(), int(dataset.count_rows(filter=only))
        except (OSError, pa.ArrowInvalid) as exc:
            raise StorageError(f"cannot read {self.uri(kind)}: {exc}") from None

    def read(self, run: Run, kind: str, columns: Sequence[str]) -> pa.Table:
        """``run``'s rows of table ``kind``, with those of ``columns`` the table has (of the
        declared schema's, none, if there is no such table yet).

        Raises:
            StorageError: the table exists but cannot be read.
        """
        import pyarrow as pa

        from engine.schema import SCHEMAS

        table = self._open(kind)
        if table is None:
            declared = SCHEMAS[kind]
            return declared.empty_table().select([c for c in columns if c in declared.names])
        dataset, only = self._of_run(table, run, kind)
        wanted = [name for name in columns if name in dataset.schema.names]
        try:
            return dataset.to_table(columns=wanted, filter=only)
        except (OSError, pa.ArrowInvalid) as exc:
            raise StorageError(f"cannot read {self.uri(kind)}: {exc}") from None

    def _of_run(self, table: DeltaTable, run: Run, kind: str) -> tuple[ds.Dataset, ds.Expression]:
        """``table`` (``kind``) as a pyarrow dataset and the filter to ``run``'s rows (its
        partition first, which prunes files)."""
        import pyarrow as pa
        import pyarrow.dataset as ds

        day = pa.scalar(date.fromisoformat(run.run_date), pa.date32())
        only = (ds.field(RUN_DATE) == day) & (ds.field("run_id") == run.run_id)
        return table.to_pyarrow_dataset(filesystem=self.arrow_filesystem(kind)), only

    def arrow_filesystem(self, kind: str) -> pafs.FileSystem:
        """Table ``kind``'s folder as a native Arrow filesystem, for reading its files.

        Without one, deltalake reads through a filesystem written in Python
        (``DeltaStorageHandler``), which Arrow's I/O threads call into; those threads then
        abort or deadlock the process at exit (in about 4 runs out of 10 of a script that only
        reads a table here, with pyarrow 26 and deltalake 1.6).
        """
        import pyarrow.fs as pafs

        filesystem, root = self.store.filesystem()
        return pafs.SubTreeFileSystem(f"{root}/{kind}", filesystem)

    def _open(self, kind: str) -> DeltaTable | None:
        """Table ``kind`` at its latest version; ``None`` when there is none yet.

        Raises:
            StorageError: the table exists but cannot be read.
        """
        from deltalake import DeltaTable
        from deltalake.exceptions import DeltaError, TableNotFoundError

        # Not DeltaTable.is_deltatable: it keeps the GIL while it waits for the store.
        try:
            return DeltaTable(self.uri(kind), storage_options=self.store.storage_options())
        except TableNotFoundError:
            return None
        except (DeltaError, OSError) as exc:
            raise StorageError(f"cannot read {self.uri(kind)}: {exc}") from None
