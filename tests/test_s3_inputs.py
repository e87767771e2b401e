"""S3 inputs: one task per object, byte-range chunks with whole lines, seed 002's regression.

Everything runs against the emulated S3 (moto's server on 127.0.0.1): the client lists,
the workers (local processes, or the emulated Lambdas) read their ranges with ranged GETs.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import s3_tasks

import fanout
from fanout.testing import EmulatedAws

BUCKET = "research-data"


@pytest.fixture(scope="module")
def aws(offline_aws: EmulatedAws) -> EmulatedAws:
    offline_aws.client("s3").create_bucket(Bucket=BUCKET)
    return offline_aws


def put(aws: EmulatedAws, key: str, data: bytes) -> None:
    aws.client("s3").put_object(Bucket=BUCKET, Key=key, Body=data)


EDGE_CASES = {
    "edge/empty.txt": b"",
    "edge/no-trailing-newline.txt": b"alpha\nbeta\ngamma",
    "edge/long-line.txt": b"a\n" + b"x" * 50 + b"\nb\nc\n",
    "edge/crlf.txt": b"one\r\ntwo\r\nthree\r\n",
    "edge/newlines-only.txt": b"\n\n\n\n",
    "edge/one-line.txt": b"just one line\n",
}


@pytest.mark.parametrize("chunk_bytes", [1, 2, 3, 5, 7, 16, 1000])
def test_chunks_keep_lines_whole(aws: EmulatedAws, chunk_bytes: int) -> None:
    for key, data in EDGE_CASES.items():
        put(aws, key, data)
    chunks = fanout.s3_chunks(f"s3://{BUCKET}/edge/", chunk_bytes=chunk_bytes)
    assert sorted({c.key for c in chunks}) == sorted(EDGE_CASES)
    for key, data in EDGE_CASES.items():
        mine = [c for c in chunks if c.key == key]
        assert len(mine) == max(1, -(-len(data) // chunk_bytes))  # at least one per object
        pieces = [c.read() for c in mine]
        assert b"".join(pieces) == data  # nothing lost, nothing read twice
        line_starts = {0} | {i + 1 for i, b in enumerate(data) if b == ord("\n")}
        offset = 0
        for chunk, piece in zip(mine, pieces, strict=True):
            if piece:
                assert offset in line_starts  # starts on a line boundary...
                assert chunk.start <= offset < chunk.end  # ...of a line that starts in it
                assert piece.endswith(b"\n") or offset + len(piece) == len(data)
            offset += len(piece)
    assert fanout.s3_chunks(f"s3://{BUCKET}/edge/crlf.txt", chunk_bytes=4)[1].text() == \
        "two\r\n"


def test_binary_chunks_are_exact_byte_ranges(aws: EmulatedAws) -> None:
    data = bytes(range(256)) * 3
    put(aws, "bin/blob", data)
    chunks = fanout.s3_chunks(f"s3://{BUCKET}/bin/blob", chunk_bytes=100, lines=False)
    assert [len(c.read()) for c in chunks] == [100] * 7 + [68]
    assert b"".join(c.read() for c in chunks) == data


def test_an_object_replaced_after_listing_is_refused(aws: EmulatedAws) -> None:
    put(aws, "changing/log.txt", b"first version\n" * 10)
    chunks = fanout.s3_chunks(f"s3://{BUCKET}/changing/", chunk_bytes=40)
    assert chunks[0].read().startswith(b"first")
    put(aws, "changing/log.txt", b"second version\n" * 10)
    with pytest.raises(fanout.InputChanged, match="changed after"):
        chunks[1].read()


def test_bad_inputs_are_named(aws: EmulatedAws) -> None:
    with pytest.raises(FileNotFoundError, match="no objects under"):
        fanout.s3_chunks(f"s3://{BUCKET}/nothing-here/")
    with pytest.raises(ValueError, match="chunk_bytes"):
        fanout.s3_chunks(f"s3://{BUCKET}/edge/", chunk_bytes=0)
    with pytest.raises(ValueError, match="names no bucket"):
        fanout.s3_chunks("s3:///key")


def write_csv(aws: EmulatedAws, key: str, rows: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3))
    y = 1.5 + x @ np.array([2.0, -3.0, 0.5]) + rng.normal(scale=0.1, size=rows)
    table = np.column_stack([x, y])
    out = io.StringIO()
    out.write("x1,x2,x3,y\n")
    np.savetxt(out, table, delimiter=",", fmt="%.17g")
    put(aws, key, out.getvalue().encode())
    return table


def check_regression(table: np.ndarray, answer: tuple[np.ndarray, int]) -> None:
    beta, rows = answer
    x = np.column_stack([np.ones(len(table)), table[:, :3]])
    expected, *_ = np.linalg.lstsq(x, table[:, 3], rcond=None)
    assert rows == len(table)  # every row counted exactly once across the chunks
    np.testing.assert_allclose(beta, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend", ["aws", "local"])
def test_seed_002_regression_as_one_map_reduce(aws: EmulatedAws, tmp_path: Path,
                                               backend: str) -> None:
    table = write_csv(aws, f"regression/{backend}.csv", rows=4000, seed=2)
    options = aws.backend_options if backend == "aws" else {"home": str(tmp_path / "home")}
    with fanout.Executor(backend=backend, max_workers=2, progress=False, **options) as ex:
        chunks = fanout.s3_chunks(f"s3://{BUCKET}/regression/{backend}.csv",
                                  chunk_bytes=40_000)
        assert len(chunks) > 5
        answer = ex.map_reduce(s3_tasks.normal_equations, chunks, s3_tasks.solve)
        check_regression(table, answer.result(timeout=300))


def test_folder_markers_are_not_objects(aws: EmulatedAws) -> None:
    """The S3 console's "folders" are empty keys ending in '/': a prefix that names one
    lists what is under it, not the marker."""
    from fanout.s3_inputs import list_objects

    for key in ("markers/", "markers/in/", "markers/in/a.csv", "markers/b.csv",
                "markers/empty/"):
        put(aws, key, b"" if key.endswith("/") else b"row\n")
    listed = [key for _bucket, key, _size, _etag in list_objects(f"s3://{BUCKET}/markers/")]
    assert listed == ["markers/b.csv", "markers/in/a.csv"]
    assert [key for _b, key, _s, _e in list_objects(f"s3://{BUCKET}/markers/in/")] == [
        "markers/in/a.csv"]
    with pytest.raises(FileNotFoundError, match="no objects under"):
        list_objects(f"s3://{BUCKET}/markers/empty/")  # only a marker there


@pytest.mark.parametrize("backend", ["aws", "local"])
def test_map_over_a_prefix_is_one_task_per_object(aws: EmulatedAws, tmp_path: Path,
                                                  backend: str) -> None:
    for name, lines in (("a.csv", 3), ("b.csv", 1), ("sub/c.csv", 2)):
        put(aws, f"daily/{name}", b"row\n" * lines)
    options = aws.backend_options if backend == "aws" else {"home": str(tmp_path / "home")}
    with fanout.Executor(backend=backend, max_workers=2, progress=False, **options) as ex:
        out = list(ex.map(s3_tasks.describe, f"s3://{BUCKET}/daily/", timeout=300))
    assert out == [("daily/a.csv", 12, 3), ("daily/b.csv", 4, 1), ("daily/sub/c.csv", 8, 2)]
