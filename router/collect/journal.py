"""The append-only JSONL journal of finished (prompt, model, sample) triples: what makes a run resumable.

One line per finished attempt, flushed and fsync'd with each batch, so a killed run loses at most the
calls in flight. A torn last line (a kill mid-write) is cut off when the journal is opened again. A triple
is done once it has a line with a reward. Failed lines are kept (their errors are reported) and the triple
is tried again by the next run: re-scored only if its response was saved, otherwise sampled again.
An exclusive lock keeps two runs from writing to one folder.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from router.collect import CollectError

JOURNAL_NAME = "journal.jsonl"
Triple = tuple[str, str, int]


@dataclass(frozen=True)
class Record:
    """One finished attempt; ``reward`` is None when sampling or scoring failed, and ``error`` says why."""

    key: str
    prompt_id: str
    model: str
    sample: int
    response: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int | None = None
    logprobs: list[dict] | None = None
    cost_usd: float | None = None
    reward: float | None = None
    error: str | None = None

    @property
    def triple(self) -> Triple:
        return (self.key, self.model, self.sample)

    @property
    def done(self) -> bool:
        return self.reward is not None


class Journal:
    """The journal file of one --out folder, locked for this process while open."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / JOURNAL_NAME
        try:
            self._file = open(self.path, "a+b")
        except OSError as exc:
            raise CollectError(f"--out {folder}: cannot write {JOURNAL_NAME} ({exc.strerror}); pass a writable folder") from None
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise CollectError(f"--out {folder}: another `erp collect` is writing to it; wait for it or use another --out") from None
        self.skipped = 0
        self.records = self._read_and_repair()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._file.close()

    def append(self, records: list[Record]) -> None:
        """Write the records as lines and make them durable before returning."""
        if not records:
            return
        lines = "".join(json.dumps(asdict(r), ensure_ascii=False, allow_nan=False) + "\n" for r in records)
        self._file.write(lines.encode("utf-8"))
        self._file.flush()
        os.fsync(self._file.fileno())
        self.records.extend(records)

    def latest(self) -> dict[Triple, Record]:
        """Per triple, its scored record if it has one, else its last failure."""
        latest: dict[Triple, Record] = {}
        for record in self.records:
            previous = latest.get(record.triple)
            if previous is None or record.done or not previous.done:
                latest[record.triple] = record
        return latest

    def _read_and_repair(self) -> list[Record]:
        """Parse every complete line; truncate a torn last line so the next append starts on a fresh line."""
        self._file.seek(0)
        records, end = [], 0
        for line in self._file:
            if not line.endswith(b"\n"):
                break
            end += len(line)
            try:
                records.append(Record(**json.loads(line)))
            except (ValueError, TypeError):
                self.skipped += 1
        self._file.truncate(end)
        return records
