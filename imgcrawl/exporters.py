"""The manifest as CSV (``-o images.csv``): the same fields, ``thumbs`` as JSON."""

from __future__ import annotations

import json

from scrapy.exporters import CsvItemExporter


class ManifestCsvItemExporter(CsvItemExporter):
    """Scrapy's CSV exporter writes a dict as its Python repr; JSON can be read back."""

    def serialize_field(self, field, name, value):
        if isinstance(value, dict):
            value = json.dumps(value, sort_keys=True)
        return super().serialize_field(field, name, value)
