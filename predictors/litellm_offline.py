"""LiteLLM, imported so that it never reaches for the network: import it from here, never directly.

LiteLLM downloads its price map at import time unless ``LITELLM_LOCAL_MODEL_COST_MAP`` is set before its
first import; this module sets it (keeping a value the user chose) and then imports LiteLLM once for the
whole process.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm  # noqa: E402  (must follow the environment variable above)

litellm.suppress_debug_info = True

__all__ = ["litellm"]
