"""Grounded prompting: which record facts go before the questions for each image.

With `[prompt] use_records` (or `scan --use-records`), an image linked to an object record
(artnote import records) is asked its questions after the record's title, maker, date and
medium (artnote.model.prompts.record_context); other images get the plain prompts. The
prompt hash then covers the facts, so `scan --reannotate` finds the images whose record
arrived or changed since they were annotated.
"""

from __future__ import annotations

from dataclasses import replace

from artnote.catalog import Catalog
from artnote.catalog.rows import PendingImage


class RecordContexts:
    """Grounded prompting: each image's record facts (prompts.record_context), looked up
    once per image; without use_records, every image gets the plain prompt ('')."""

    def __init__(self, catalog: Catalog, use_records: bool) -> None:
        self.catalog, self.use_records = catalog, use_records
        self.known: dict[int, str] = {}

    def of(self, items: list[PendingImage]) -> list[str]:
        return self.for_ids([p.image_id for p in items])

    def for_ids(self, image_ids: list[int]) -> list[str]:
        """The context of each image ('' without use_records or without a record)."""
        if not self.use_records:
            return [""] * len(image_ids)
        from artnote.model import prompts

        wanted = [i for i in image_ids if i not in self.known]
        if wanted:
            records = self.catalog.records_for(wanted)
            self.known.update((i, prompts.record_context(records.get(i))) for i in wanted)
        return [self.known[i] for i in image_ids]

    def prompt_hashes(self, items: list[PendingImage]) -> list[str]:
        """The prompt hash each image's annotation would have now (for --reannotate)."""
        from artnote.model import prompts

        return [prompts.prompt_hash(c) for c in self.of(items)]

    def attach(self, items: list[PendingImage]) -> list[PendingImage]:
        return [replace(p, context=c) for p, c in zip(items, self.of(items), strict=True)]
