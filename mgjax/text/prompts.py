"""What each text encoder reads of a prompt.

Movie Gen gives UL2 and MetaCLIP the whole prompt and ByT5 only the "visual text":
the words the video must show written in it (a sign, a title), which prompts put in
quotes. A prompt with no quoted span gives ByT5 nothing to read, and the
conditioning then has no ByT5 tokens for it.
"""

from __future__ import annotations

import re

# Straight double quotes and typographic ones; a span may not cross a line.
_QUOTED = re.compile(r'"([^"\n]+)"|\u201c([^\u201d\n]+)\u201d')

# What an encoder reads: the whole prompt, or only its quoted spans.
SOURCES = ("prompt", "visual_text")


def visual_text(prompt: str) -> str:
  """The quoted spans of a prompt, joined by spaces; '' when there are none."""
  spans = (a or b for a, b in _QUOTED.findall(prompt))
  return " ".join(span.strip() for span in spans if span.strip())


def encoder_text(prompt: str, source: str) -> str:
  if source == "prompt":
    return prompt
  if source == "visual_text":
    return visual_text(prompt)
  raise ValueError(f"Unknown text source {source!r}; use one of {SOURCES}.")
