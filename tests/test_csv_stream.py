"""relay/core/csv_stream.py: records from chunks of any size, in bounded memory."""

from __future__ import annotations

import pytest

from relay.core.csv_stream import CsvStream, Record

SAMPLE = (
    b'\xef\xbb\xbfemail,note\r\na@x.co,"one, two"\r\nb@x.co,"say ""hi""\nagain"\n\n'
    + "c@x.co,caf\u00e9\n".encode()
    + b"d@x.co,last"
)
EXPECTED = [
    Record(1, ["email", "note"]),
    Record(2, ["a@x.co", "one, two"]),
    Record(3, ["b@x.co", 'say "hi"\nagain']),
    Record(4, []),
    Record(5, ["c@x.co", "caf\u00e9"]),
    Record(6, ["d@x.co", "last"]),
]


def read(data: bytes, piece: int, max_record_bytes: int = 65536) -> list[Record]:
    stream = CsvStream(max_record_bytes)
    records: list[Record] = []
    for start in range(0, len(data), piece):
        records += stream.feed(data[start : start + piece])
    return records + stream.end()


@pytest.mark.parametrize("piece", [1, 2, 3, 5, 7, 64, 100_000])
def test_any_chunking_gives_the_same_records(piece: int) -> None:
    assert read(SAMPLE, piece) == EXPECTED


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", []),
        (b"\xef\xbb", [Record(1, [], "not UTF-8")]),  # half a BOM is not one
        (b"\xef\xbb\xbf", []),
        (b"a,b", [Record(1, ["a", "b"])]),
        (b'a,"open\nstill open', [Record(1, [], "not CSV: unexpected end of data")]),
        (b"a\xff\nb\n", [Record(1, [], "not UTF-8"), Record(2, ["b"])]),
    ],
)
def test_edges(data: bytes, expected: list[Record]) -> None:
    assert read(data, 1) == expected == read(data, 1000)


def test_a_stray_quote_in_an_unquoted_cell_spoils_only_its_rows() -> None:
    """The quote count says the record goes on; the csv module disagrees: those lines are
    reported together, and the rest reads on."""
    records = read(b'h\na"b\nc"d\ne\n', 3)
    assert records == [
        Record(1, ["h"]),
        Record(2, [], "not CSV: a quote in an unquoted cell"),
        Record(3, ["e"]),
    ]


@pytest.mark.parametrize("piece", [1, 10, 1000])
def test_an_over_long_record_is_skipped_not_kept(piece: int) -> None:
    long_line = b"x" * 500 + b"\n"
    unclosed = b'"' + b"y\n" * 300  # a quote never closed runs into the limit, too
    data = b"a\n" + long_line + b"b\n" + unclosed
    stream = CsvStream(100)
    records: list[Record] = []
    for start in range(0, len(data), piece):
        records += stream.feed(data[start : start + piece])
        assert len(stream._tail) + stream._size <= 100  # never more held
    records += stream.end()
    too_long = "longer than 100 bytes (or a quote never closed)"
    assert records[:4] == [
        Record(1, ["a"]),
        Record(2, [], too_long),
        Record(3, ["b"]),
        Record(4, [], too_long),
    ]
    assert all(r.cells == ["y"] for r in records[4:])  # after the cut, lines read on
