"""``erp collect``: sample every pool model on prompts, score the responses, write a routing dataset.

prompts (read, categorize, pick) -> sampling (LiteLLM, retries) -> scoring (a RewardScorer) -> journal
(append-only, resumable) -> compact (the routing-dataset files, replaced atomically). ``pipeline`` wires them.
"""


class CollectError(ValueError):
    """Input or an --out folder the run cannot start with; printed as one line, exit code 2."""


def error_message(exc: BaseException) -> str:
    """The error as one short line, for a journal line, the summary or a CollectError."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]
