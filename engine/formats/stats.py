"""Running size statistics over the valid examples of a dataset."""

from __future__ import annotations

from engine.formats.messages import Findings
from engine.formats.report import DatasetStats

CHARS_PER_TOKEN = 4  # the usual rough estimate for English text with BPE tokenizers


class StatsTally:
    """Accumulates per-example sizes in constant memory."""

    def __init__(self) -> None:
        self.n = 0
        self.messages_total = 0
        self.messages_min = 0
        self.messages_max = 0
        self.chars_total = 0
        self.chars_min = 0
        self.chars_max = 0
        self.assistant = 0
        self.weight0 = 0
        self.with_tools = 0

    def add(self, found: Findings) -> None:
        """Count one valid example."""
        messages, chars = found.messages, found.chars
        if self.n == 0:
            self.messages_min = self.messages_max = messages
            self.chars_min = self.chars_max = chars
        else:  # plain comparisons: this runs once per example
            if messages < self.messages_min:
                self.messages_min = messages
            elif messages > self.messages_max:
                self.messages_max = messages
            if chars < self.chars_min:
                self.chars_min = chars
            elif chars > self.chars_max:
                self.chars_max = chars
        self.n += 1
        self.messages_total += messages
        self.chars_total += chars
        self.assistant += found.assistant
        self.weight0 += found.weight0
        self.with_tools += found.tools

    def result(self) -> DatasetStats:
        """The statistics so far."""
        n = max(self.n, 1)
        return DatasetStats(
            messages_min=self.messages_min,
            messages_mean=round(self.messages_total / n, 3),
            messages_max=self.messages_max,
            chars_min=self.chars_min,
            chars_mean=round(self.chars_total / n, 3),
            chars_max=self.chars_max,
            chars_total=self.chars_total,
            assistant_messages=self.assistant,
            weight0_messages=self.weight0,
            examples_with_tools=self.with_tools,
            est_tokens_total=-(-self.chars_total // CHARS_PER_TOKEN),
            est_tokens_max_example=-(-self.chars_max // CHARS_PER_TOKEN),
        )
