"""CSV records from a body that arrives in chunks, in bounded memory.

``CsvStream.feed(chunk)`` returns the records completed by that chunk;
``end()`` the last one. Only the current record's bytes are kept, never more
than ``max_record_bytes`` of them: a longer record (a huge line, or an
unbalanced quote that would swallow the rest of the file) is discarded up to
its next line end and reported as a problem, and the stream goes on.

Records are cut at a line end (LF or CRLF; a lone CR is not one) where the
number of ``"`` seen since the record began is even, which is where the csv
module's dialect ends a record in well-formed CSV (RFC 4180: quotes inside a
quoted field are doubled); each record's lines are then parsed by its own
``csv.reader`` (strict), so a malformed record never disturbs the next. The
body is UTF-8; a byte order mark at its start is skipped; a record that is
not UTF-8 is a problem of that record only (LF never occurs inside a UTF-8
sequence, so lines are decoded one by one).

``row`` numbers are a spreadsheet's: the header is row 1, and a blank line
counts as a row (an empty record, which callers skip).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass

BOM = b"\xef\xbb\xbf"
MAX_RECORD_BYTES = 64 * 1024


@dataclass(frozen=True)
class Record:
    row: int
    cells: list[str]  # empty for a blank line or a problem
    problem: str | None = None


class CsvStream:
    def __init__(self, max_record_bytes: int = MAX_RECORD_BYTES) -> None:
        self._max = max_record_bytes
        self._tail = b""  # the bytes after the last line end
        self._lines: list[bytes] = []  # the current record's complete lines
        self._size = 0  # bytes in _lines
        self._quotes = 0  # '"' in _lines
        self._skipping = False  # discarding an over-long record up to its next line end
        self._started = False  # the BOM question settled
        self.rows = 0

    def feed(self, chunk: bytes) -> list[Record]:
        data = self._tail + chunk
        if not self._started:
            if len(data) < len(BOM) and BOM.startswith(data):
                self._tail = data
                return []
            self._started = True
            data = data.removeprefix(BOM)
        records: list[Record] = []
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            self._line(data[start : end + 1], records)
            start = end + 1
        self._tail = data[start:]
        if not self._skipping and self._size + len(self._tail) > self._max:
            records.append(self._too_long())
            self._skipping, self._tail = True, b""
        elif self._skipping:
            self._tail = b""
        return records

    def end(self) -> list[Record]:
        """The record the body ends in without a line end."""
        records: list[Record] = []
        if not self._started:
            self._tail = self._tail.removeprefix(BOM)
        if self._tail and not self._skipping:
            self._line(self._tail, records)
        if self._lines:  # the body ended inside quotes
            records.append(self._parsed())
        self._tail = b""
        return records

    def _line(self, line: bytes, records: list[Record]) -> None:
        if self._skipping:  # the rest of the over-long record, already reported
            self._skipping = False
            return
        self._lines.append(line)
        self._size += len(line)
        self._quotes += line.count(b'"')
        if self._size > self._max:
            records.append(self._too_long())
        elif self._quotes % 2 == 0:
            records.append(self._parsed())

    def _too_long(self) -> Record:
        self._reset()
        self.rows += 1
        return Record(self.rows, [], f"longer than {self._max} bytes (or a quote never closed)")

    def _parsed(self) -> Record:
        lines = self._lines
        self._reset()
        self.rows += 1
        try:
            text = [line.decode() for line in lines]
        except UnicodeDecodeError:
            return Record(self.rows, [], "not UTF-8")
        try:
            found = list(csv.reader(text, strict=True))
        except csv.Error as error:
            return Record(self.rows, [], f"not CSV: {error}")
        if len(found) > 1:  # a stray quote made us join lines the csv module keeps apart
            return Record(self.rows, [], "not CSV: a quote in an unquoted cell")
        return Record(self.rows, found[0] if found else [])

    def _reset(self) -> None:
        self._lines, self._size, self._quotes = [], 0, 0
