"""Prompts to collect on: open-perfectblend conversations, or a routing dataset's ``prompts.parquet``.

Every prompt gets a content key (a hash of its system and user text). The journal is keyed by it, so a
prompt keeps its finished samples whatever file, row order or ``--limit`` it comes from, and an edited
prompt is never credited with its old answers.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset
import yaml

from router.collect import CollectError, error_message

# Built-in category of each open-perfectblend source: a source belongs to the first category one of whose
# patterns occurs in it (case-insensitive). A --categories YAML file is tried before this table.
DEFAULT_CATEGORIES: dict[str, tuple[str, ...]] = {
    "math": ("metamathqa", "orca-math"),
    "code": ("evol-codealpaca", "ultrainteract"),
    "instruction_following": ("autoif",),
    "chat": ("ultrachat", "ultrafeedback", "lmsys", "arena"),
}
UNMAPPED_CATEGORY = "other"
CONVERSATION_COLUMNS = ("conversations", "source")
TABLE_COLUMNS = ("prompt_id", "prompt")
OPTIONAL_TABLE_COLUMNS = ("system", "category", "source", "answer")
PROMPT_COLUMNS = ("prompt_id", "prompt", "system", "category", "source", "prompt_chars", "answer", "key")


def prompt_messages(prompt: str, system: str | None) -> list[dict]:
    """The conversation a collected prompt is asked as: its system turn (if any), then the user turn."""
    turns = [{"role": "system", "content": system}] if isinstance(system, str) and system else []
    return [*turns, {"role": "user", "content": prompt}]


def prompt_key(system: str | None, prompt: str) -> str:
    """Content hash of a prompt: the journal's key and the id of a prompt read from conversations."""
    system = system if isinstance(system, str) else ""  # a missing system is None, or NaN in a str column
    return hashlib.sha256(f"{system}\x00{prompt}".encode()).hexdigest()[:16]


def category_rules(path: Path | None) -> list[tuple[str, str]]:
    """(source substring, category) pairs in priority order: the override file's first, then the built-ins."""
    rules: list[tuple[str, str]] = []
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise CollectError(f"{path}: cannot read the category file ({error_message(exc)})") from None
        valid = isinstance(raw, dict) and all(
            isinstance(patterns, (str, list)) and all(isinstance(p, str) for p in _as_list(patterns))
            for patterns in raw.values()
        )
        if not valid:
            raise CollectError(
                f"{path}: expected a mapping of category to source substrings, e.g. 'math: [gsm8k, MetaMathQA]'"
            )
        rules += [(pattern.lower(), str(category)) for category, patterns in raw.items() for pattern in _as_list(patterns)]
    rules += [(pattern, category) for category, patterns in DEFAULT_CATEGORIES.items() for pattern in patterns]
    return rules


def categorize(sources: pd.Series, rules: list[tuple[str, str]]) -> pd.Series:
    """The category of each source by the first matching rule; ``other`` where none matches."""

    def category_of(source: str) -> str:
        lowered = source.lower()
        return next((category for pattern, category in rules if pattern in lowered), UNMAPPED_CATEGORY)

    sources = sources.fillna("").astype(str)
    return sources.map({source: category_of(source) for source in sources.unique()})


def read_prompts(path: Path, categories: Path | None = None) -> tuple[pd.DataFrame, int]:
    """Prompts with PROMPT_COLUMNS, and how many duplicate conversations were dropped (they share an id)."""
    frame = _read_table(Path(path))
    rules = category_rules(categories)
    if set(CONVERSATION_COLUMNS) <= set(frame.columns):
        prompts = _from_conversations(frame, path)
        prompts["category"] = categorize(prompts["source"], rules)
        unique = prompts.drop_duplicates("prompt_id").reset_index(drop=True)[list(PROMPT_COLUMNS)]
        return unique, len(prompts) - len(unique)
    if set(TABLE_COLUMNS) <= set(frame.columns):
        return _from_table(frame, path, rules), 0
    raise CollectError(
        f"{path}: neither open-perfectblend (columns conversations, source) nor a routing dataset's "
        f"prompts.parquet (columns prompt_id, prompt); found columns {', '.join(map(str, frame.columns)) or 'none'}"
    )


def stratified_head(prompts: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    """``limit`` prompts with each category's share of the whole, chosen at random but reproducibly.

    Within each category the rows are shuffled and placed at evenly spaced quantiles; taking the first
    ``limit`` by quantile interleaves the categories in proportion to their sizes.
    """
    if limit is None or limit >= len(prompts):
        return prompts
    shuffled = prompts.sample(frac=1.0, random_state=seed)
    by_category = shuffled.groupby("category", sort=False)
    quantile = (by_category.cumcount() + 0.5) / by_category["category"].transform("size")
    chosen = quantile.sort_values(kind="stable").index[:limit]
    return prompts.loc[sorted(chosen)].reset_index(drop=True)


def _read_table(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise CollectError(f"{path}: prompts file not found; pass an open-perfectblend parquet or JSONL file, or a prompts.parquet")
    jsonl = path.suffix in (".jsonl", ".json")
    try:
        if jsonl:
            return pd.read_json(path, lines=True, dtype=False)
        data = pyarrow.dataset.dataset(path, format="parquet")
        if not data.files:
            raise CollectError(f"{path}: a folder without parquet files; pass an open-perfectblend parquet or JSONL file, or a prompts.parquet")
        wanted = [c for c in (*CONVERSATION_COLUMNS, *TABLE_COLUMNS, *OPTIONAL_TABLE_COLUMNS) if c in data.schema.names]
        return data.to_table(columns=list(dict.fromkeys(wanted))).to_pandas()
    except CollectError:
        raise
    except Exception as exc:  # pandas and pyarrow raise many unrelated types for unreadable files
        kind = "JSONL" if jsonl else "parquet"
        raise CollectError(
            f"{path}: cannot be read as {kind} ({type(exc).__name__}: {error_message(exc)}); pass an "
            "open-perfectblend parquet or JSONL file, or a prompts.parquet"
        ) from None


def _from_conversations(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """The first human turn of each conversation as the prompt, its system turn (if any) as the system."""
    rows = []
    for row, (conversation, source) in enumerate(zip(frame["conversations"], frame["source"], strict=True)):
        # parquet gives numpy arrays, JSONL lists; null, a missing key (NaN), numbers and strings are refused
        turns = list(conversation) if isinstance(conversation, (list, tuple, np.ndarray)) else None
        if turns is None or not all(isinstance(turn, dict) for turn in turns):
            raise CollectError(f"{path}: row {row} (0-based): conversations must be a list of {{from, value}} turns")
        if not turns:
            raise CollectError(f"{path}: row {row} (0-based): empty conversations; drop the row")
        human = next((t.get("value") for t in turns if t.get("from") == "human"), None)
        if not isinstance(human, str) or not human.strip():
            raise CollectError(f"{path}: row {row} (0-based): no human turn with text in conversations; drop the row")
        system = next((t.get("value") for t in turns if t.get("from") == "system" and t.get("value")), None)
        key = prompt_key(system, human)
        rows.append((key, human, system, "" if source is None else str(source), len(human), key))
    frame = pd.DataFrame(rows, columns=["prompt_id", "prompt", "system", "source", "prompt_chars", "key"])
    return frame.assign(answer=None)


def _from_table(frame: pd.DataFrame, path: Path, rules: list[tuple[str, str]]) -> pd.DataFrame:
    prompts = frame.reset_index(drop=True).copy()
    empty = prompts["prompt"].isna() | (prompts["prompt"].astype(str).str.strip() == "")
    if empty.any():
        raise CollectError(f"{path}: row {int(empty.idxmax())} (0-based): empty prompt; drop the row")
    prompts["prompt_id"] = prompts["prompt_id"].astype(str)
    duplicated = prompts["prompt_id"][prompts["prompt_id"].duplicated()]
    if len(duplicated):
        raise CollectError(f"{path}: prompt_id {duplicated.iloc[0]!r} appears twice; ids must be unique")
    for optional in ("system", "answer"):
        if optional not in prompts:
            prompts[optional] = None
    prompts["source"] = prompts["source"].fillna("").astype(str) if "source" in prompts else ""
    if "category" not in prompts:
        prompts["category"] = categorize(prompts["source"], rules)
    prompts["prompt_chars"] = prompts["prompt"].str.len()
    prompts["key"] = [prompt_key(s, p) for s, p in zip(prompts["system"], prompts["prompt"], strict=True)]
    return prompts[list(PROMPT_COLUMNS)]


def _as_list(patterns: str | list) -> list:
    return [patterns] if isinstance(patterns, str) else patterns
