"""Writing prepared shards (the format is described in :mod:`pipeline.data.shards`).

Kept apart from the readers so that the ``prepare`` stage and its worker processes never import torch.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST = "manifest.json"
SKIPPED = "skipped.json"
SAMPLES = "samples.png"
ROW_GROUP = 256  # rows per parquet row group: the unit of work of ShardDataset


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class ShardWriter:
    """Append rows of one split; every ``shard_size`` rows become one parquet file in ``out_dir``."""

    def __init__(self, out_dir: Path, split: str, shard_size: int, schema: pa.Schema) -> None:
        self.out_dir, self.split, self.shard_size, self.schema = out_dir, split, shard_size, schema
        self.rows: list[dict] = []
        self.shards: list[dict] = []

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.shard_size:
            self._flush()

    def close(self) -> list[dict]:
        """Write the last partial shard; the shard records for the manifest."""
        if self.rows:
            self._flush()
        return self.shards

    def _flush(self) -> None:
        name = f"{self.split}-{len(self.shards):05d}.parquet"
        table = pa.Table.from_pylist(self.rows, schema=self.schema)
        path = self.out_dir / name
        # The image bytes are PNG / JPEG already: parquet compression would only cost time.
        pq.write_table(table, path, row_group_size=ROW_GROUP, compression="none")
        meta = pq.read_metadata(path)
        self.shards.append({
            "file": name,
            "rows": table.num_rows,
            "row_groups": [meta.row_group(i).num_rows for i in range(meta.num_row_groups)],
            "sha256": sha256_file(path),
        })
        self.rows = []
