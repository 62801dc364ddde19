"""Speed of the prepare stage's per-image work: draft-mode JPEG decoding and parallel workers vs a plain decode.

    .venv/bin/python bench/prepare.py [--n 200] [--size 256] [--workers 2] [--format png]

Writes ``--n`` photo-like JPEGs of typical ImageNet sizes (500x375, 375x500, 500x333, 333x500) into a
temporary folder, then measures images/s of what the stage does to each file (read, decode, RGB,
``size x size`` centre crop in ADM's convention, encode for the shard) with
:class:`pipeline.data.imagenet.Processing`:

- plain: ``jpeg_draft: false`` (full decode), in this process;
- draft: ``jpeg_draft: true`` (reduced-size DCT decoding where it applies), in this process;
- draft with ``--workers`` processes: the same through the prepare engine's own ``process_all`` and worker
  pool (:mod:`pipeline.data.prepare`; started before timing, as the stage starts it once per run), results
  back in order.

A second table repeats this on 1600x1200 photos, where draft decoding can skip 2x-4x of the work.
Each figure is the best of ``--repeat`` passes over the files; the CPU column (this process only)
tells the cost per image apart from a machine busy with other work.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.data.imagenet import Processing, Task  # noqa: E402
from pipeline.data.prepare import process_all, worker_pool  # noqa: E402

TYPICAL = [(500, 375), (375, 500), (500, 333), (333, 500)]


def photo_jpeg(seed: int, width: int, height: int) -> bytes:
    """A photo-like JPEG: smooth colour regions, edges and sensor-like noise, quality 90."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(
        (width, height), Image.Resampling.BICUBIC
    )
    arr = np.asarray(coarse, dtype=np.float32)
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(6):  # a few sharp-edged objects
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(20, 120)
        arr[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.integers(0, 256, 3)
    arr += rng.normal(0, 6, arr.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def measure(
    process: Processing, tasks: list[Task], repeat: int, pool=None, workers: int = 1
) -> tuple[float, float | None]:
    """Best images/s over ``repeat`` passes, and CPU ms per image of this process (None with a pool)."""
    best, cpu = float("inf"), float("inf")
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in process_all(process, tasks, pool, workers):
            pass
        best = min(best, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    return len(tasks) / best, None if pool is not None else 1000 * cpu / len(tasks)


def table(title: str, rows: list[tuple[str, int, float, float | None]]) -> str:
    base = rows[0][2]
    lines = [
        title,
        f"| {'method':<14} | workers | images/s | speed-up | CPU ms/image |",
        f"|{'-' * 16}|---------|----------|----------|--------------|",
    ]
    for m, w, ips, cpu in rows:
        cpu_s = f"{cpu:.2f}" if cpu is not None else "-"
        lines.append(f"| {m:<14} | {w:>7} | {ips:>8.1f} | {ips / base:>7.2f}x | {cpu_s:>12} |")
    return "\n".join(lines)


def bench(
    folder: Path, shapes: list[tuple[int, int]], n: int, size: int, workers: int, repeat: int, fmt: str, title: str
) -> str:
    paths = []
    for i in range(n):
        w, h = shapes[i % len(shapes)]
        path = folder / f"img_{w}x{h}_{i:04d}.JPEG"
        path.write_bytes(photo_jpeg(i, w, h))
        paths.append(str(path))
    kb = sum(Path(p).stat().st_size for p in paths) / len(paths) / 1024
    tasks = [Task(key=Path(p).stem, label=0, wnid="n00000000", name="photo", source_file=p, path=p) for p in paths]
    plain, draft = (Processing(size, use_draft, fmt, 95) for use_draft in (False, True))
    rows = [("plain decode", 1, *measure(plain, tasks, repeat)), ("draft decode", 1, *measure(draft, tasks, repeat))]
    with worker_pool(workers) as pool:
        if pool is not None:
            pool.map(abs, range(workers * 4))  # start the workers before timing
        rows.append(("draft decode", workers, *measure(draft, tasks, repeat, pool, workers)))
    return table(f"{title}: {n} JPEGs, mean {kb:.0f} KiB, {size}x{size} {fmt} output", rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--format", choices=["png", "jpeg"], default="png", help="prepare.image_format")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        typical, large = Path(tmp, "typical"), Path(tmp, "large")
        typical.mkdir()
        large.mkdir()
        print(
            bench(typical, TYPICAL, args.n, args.size, args.workers, args.repeat, args.format, "Typical ImageNet sizes")
        )
        print()
        print(
            bench(
                large,
                [(1600, 1200)],
                max(args.n // 4, 8),
                args.size,
                args.workers,
                args.repeat,
                args.format,
                "Large photos (1600x1200)",
            )
        )


if __name__ == "__main__":
    main()
