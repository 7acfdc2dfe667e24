"""`artnote report`: one self-contained HTML file about a catalog, with charts.

The page opens offline and asks for nothing: charts are inline SVG (web.report_charts),
thumbnails are JPEG data: URIs, there is no script to run, and a Content-Security-Policy
forbids any request the page could still try. The numbers behind each chart are in the
page as JSON (`<script type="application/json" id="data-...">`), for tests and users.

Memory does not grow with the collection: the catalog's rows are streamed once
(`Tally.add`), keeping counters, per-folder sums and a heap of the least certain images.
"""

from __future__ import annotations

import heapq
import io
import json
import math
from base64 import b64encode
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from markupsafe import Markup

from artnote.catalog import Catalog
from artnote.emotions import EMOTION_COLUMNS, EMOTIONS
from artnote.errors import ArtnoteError, ImageError
from artnote.files import write_error, write_text

TEMPLATES = Path(__file__).parent / "templates"
UNCERTAIN = 20  # least-certain images listed
THUMBNAIL = 160  # longest edge of a thumbnail, pixels
ALT_MARKS = (125, 250)  # IPTC's aim and the most a curator's alt text may have
ALT_BIN = 10  # characters per histogram bin
TOP_FOLDERS = 40  # folders drawn one by one; the rest are summed as one bar
TOP_REASONS = 20  # failure reasons drawn; the table lists them all
FAILURES_LISTED = 200  # failed files named in the page
ROOT_FOLDER = "."
METRIC_KEYS = ("val_loss", "emotion_accuracy", "emotion_kl")
TEXT_METRICS = ("bleu4", "meteor", "rouge_l", "cider")
TEXT_FIELDS = ("alt_text", "description", "explanation")


def main(out: Path, catalog: str | None = None, config: Path | None = None) -> None:
    """Write the report of the catalog to `out` (atomically); say where on stderr."""
    from artnote.cli_options import echo_err, open_catalog_for, settings_for

    settings = settings_for(config, catalog={"url": catalog})
    with open_catalog_for(settings) as cat:
        html, tally = build_report(cat, max_pixels=settings.scan.max_pixels)
    write_atomically(Path(out), html)
    echo_err(f"wrote a report of {tally.images} annotated images to {out}")


def write_atomically(out: Path, text: str) -> None:
    """A reader never sees half a report (artnote.files); errors are one line."""
    try:
        write_text(out, text)
    except OSError as exc:  # a missing folder, say
        raise write_error(out, exc) from None


# --- aggregation ----------------------------------------------------------------------


def folder_of(relpath: str) -> str:
    """The first component of a relpath ('/'-separated), or '.' for a file at the root."""
    head, sep, _ = relpath.partition("/")
    return head if sep else ROOT_FOLDER


def certainty(probabilities: list[float]) -> tuple[float, float] | None:
    """(entropy in bits, margin between the two most probable labels) of a distribution
    (normalised first), or None when it has no weight."""
    total = sum(probabilities)
    if not total > 0:
        return None
    p = sorted((x / total for x in probabilities), reverse=True)
    entropy = -sum(x * math.log2(x) for x in p if x > 0)
    return entropy, p[0] - p[1]


@dataclass
class Tally:
    """What the report shows, added up from the catalog's rows one at a time."""

    images: int = 0
    review: Counter[str] = field(default_factory=Counter)  # draft / corrected / approved
    emotion_sums: list[float] = field(default_factory=lambda: [0.0] * len(EMOTIONS))
    dominant: Counter[str] = field(default_factory=Counter)
    folders: dict[str, list[float]] = field(default_factory=dict)  # [images, *sums]
    alt_lengths: Counter[int] = field(default_factory=Counter)
    alt_missing: int = 0
    provenance: Counter[tuple[str, str | None]] = field(default_factory=Counter)
    # (entropy, -margin, -order, image): the largest keys are the least certain
    _heap: list[tuple[float, float, int, dict[str, Any]]] = field(default_factory=list)

    def add(self, row: dict[str, Any]) -> None:
        self.images += 1
        self.review[row.get("status") or "draft"] += 1
        probabilities = [_number(row.get(c)) for c in EMOTION_COLUMNS]
        for k, p in enumerate(probabilities):
            self.emotion_sums[k] += p
        if row.get("dominant_emotion"):
            self.dominant[row["dominant_emotion"]] += 1
        folder = self.folders.setdefault(folder_of(row["relpath"]), [0.0] * (1 + len(EMOTIONS)))
        folder[0] += 1
        for k, p in enumerate(probabilities):
            folder[k + 1] += p
        alt = row.get("alt_text")
        if alt:
            self.alt_lengths[len(alt)] += 1
        else:
            self.alt_missing += 1
        self.provenance[(row.get("model") or "unknown", row.get("adapter_name"))] += 1
        self._consider(row, probabilities)

    def _consider(self, row: dict[str, Any], probabilities: list[float]) -> None:
        found = certainty(probabilities)
        if found is None:
            return
        entropy, margin = found
        # Rounded so that equal distributions tie exactly; then the smaller margin, then
        # the earlier path (rows come in path order) ranks as less certain.
        key = (round(entropy, 9), -round(margin, 9), -self.images)
        if len(self._heap) >= UNCERTAIN and key <= self._heap[0][:3]:
            return
        image = {
            "path": row["path"],
            "relpath": row["relpath"],
            "alt_text": row.get("alt_text") or "",
            "dominant_emotion": row.get("dominant_emotion"),
            "status": row.get("status") or "draft",
            "entropy": round(entropy, 4),
            "margin": round(margin, 4),
        }
        item = (*key, image)
        if len(self._heap) < UNCERTAIN:
            heapq.heappush(self._heap, item)
        else:
            heapq.heapreplace(self._heap, item)

    def least_certain(self) -> list[dict[str, Any]]:
        return [item[3] for item in sorted(self._heap, key=lambda i: i[:3], reverse=True)]


def _number(value: Any) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return 0.0
    return x if math.isfinite(x) and x > 0 else 0.0


# --- sections -------------------------------------------------------------------------


def status_section(counts: dict[str, int], tally: Tally) -> dict[str, Any]:
    review = {s: tally.review.get(s, 0) for s in ("draft", "corrected", "approved")}
    chart = charts().bars(list(review), list(review.values()), "annotated images", "images")
    return {"data": {"counts": counts, "review": review}, "chart": chart}


def failures_section(failures: list[tuple[str, str]]) -> dict[str, Any]:
    by_reason = Counter(reason for _, reason in failures).most_common()
    data = {"total": len(failures), "by_reason": [{"reason": r, "files": n} for r, n in by_reason]}
    shown = by_reason[:TOP_REASONS]
    chart = (
        charts().bars([r for r, _ in shown], [n for _, n in shown], "failures by reason", "files")
        if shown
        else None
    )
    return {"data": data, "chart": chart, "listed": failures[:FAILURES_LISTED]}


def emotions_section(tally: Tally) -> dict[str, Any]:
    dominant = [tally.dominant.get(e, 0) for e in EMOTIONS]
    data = {
        "labels": list(EMOTIONS),
        "sums": tally.emotion_sums,
        "dominant": dominant,
        "images": tally.images,
    }
    return {"data": data, "chart": charts().emotions(tally.emotion_sums, dominant)}


def folders_section(tally: Tally) -> dict[str, Any]:
    ranked = sorted(tally.folders.items(), key=lambda kv: (-kv[1][0], kv[0]))
    shown, rest = ranked[:TOP_FOLDERS], ranked[TOP_FOLDERS:]
    rows = [{"folder": name, "images": int(v[0]), "sums": v[1:]} for name, v in shown]
    other = None
    if rest:
        sums = [sum(v[k + 1] for _, v in rest) for k in range(len(EMOTIONS))]
        other = {"folders": len(rest), "images": int(sum(v[0] for _, v in rest)), "sums": sums}
    data = {"labels": list(EMOTIONS), "folders": rows, "other": other}
    bars = rows + ([{"folder": f"{len(rest)} other folders", **other}] if other else [])
    shares = [[s / (sum(r["sums"]) or 1) for s in r["sums"]] for r in bars]
    chart = charts().folder_mix([r["folder"] for r in bars], shares) if bars else None
    return {"data": data, "chart": chart}


def alt_text_section(tally: Tally) -> dict[str, Any]:
    longest = max(tally.alt_lengths, default=0)
    top = max(longest, ALT_MARKS[-1]) // ALT_BIN * ALT_BIN + ALT_BIN
    edges = list(range(0, top + 1, ALT_BIN))
    counts = [0] * (len(edges) - 1)
    for length, n in tally.alt_lengths.items():
        counts[length // ALT_BIN] += n
    over = {str(m): sum(n for k, n in tally.alt_lengths.items() if k > m) for m in ALT_MARKS}
    data = {"edges": edges, "counts": counts, "over": over, "missing": tally.alt_missing}
    return {"data": data, "chart": charts().histogram(edges, counts, ALT_MARKS)}


def uncertain_section(tally: Tally, max_pixels: int) -> dict[str, Any]:
    images = tally.least_certain()
    shown = [{**image, "thumbnail": thumbnail_uri(image["path"], max_pixels)} for image in images]
    return {"data": images, "images": shown}


def provenance_section(tally: Tally) -> dict[str, Any]:
    mix = [
        {"model": model, "adapter_name": adapter, "images": n}
        for (model, adapter), n in tally.provenance.most_common()
    ]
    labels = [f"{m['model']} + {m['adapter_name'] or 'no adapter'}" for m in mix]
    chart = (
        charts().bars(labels, [m["images"] for m in mix], "annotations by model", "images")
        if mix
        else None
    )
    return {"data": mix, "chart": chart}


def adapters_section(adapters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for k, adapter in enumerate(adapters):
        item: dict[str, Any] = {"id": f"adapter-{k + 1}", "name": adapter["name"], "chart": None}
        try:
            series = validation_series(Path(adapter["path"]))
        except ArtnoteError as exc:
            item.update(note=str(exc), data=None)
        else:
            item["data"] = {"name": adapter["name"], "series": series}
            if series:
                item.update(note=None, chart=charts().adapter_history(series))
            else:
                item["note"] = "no validation numbers (no held-out images)"
        out.append(item)
    return out


def validation_series(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Name -> [(epoch, value)] of an adapter's validation numbers, from the metrics.json
    of its final checkpoint (`folder/final/`, or `folder` itself when it is that one)."""
    candidates = [folder / "final" / "metrics.json", folder / "metrics.json"]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise ArtnoteError(f"no metrics.json in {folder} (or its final/ folder)")
    try:
        history = json.loads(found.read_text(encoding="utf-8"))["history"]
        if not isinstance(history, list):
            raise TypeError("history is not a list")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtnoteError(f"cannot read {found}: {exc}") from None
    out: dict[str, list[tuple[int, float]]] = {}

    def add(name: str, epoch: int, value: Any) -> None:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if math.isfinite(value):
                out.setdefault(name, []).append((epoch, float(value)))

    for n, epoch in enumerate(history, start=1):
        if not isinstance(epoch, dict):
            continue
        at = epoch.get("epoch", n)
        at = at if isinstance(at, int) and not isinstance(at, bool) else n
        for key in METRIC_KEYS:
            add(key, at, epoch.get(key))
        for name in TEXT_FIELDS:
            scores = epoch.get(name)
            for key in TEXT_METRICS if isinstance(scores, dict) else ():
                add(f"{name} {key}", at, scores.get(key))
    return out


# --- the page -------------------------------------------------------------------------


def thumbnail_uri(path: str, max_pixels: int) -> str | None:
    """A JPEG data: URI of at most THUMBNAIL pixels a side, decoded as a scan decodes
    (bomb check first, EXIF orientation); None when the file cannot be read."""
    from artnote.images import decode_image

    try:
        decoded = decode_image(path, max_pixels=max_pixels, target_size=THUMBNAIL)
        buffer = io.BytesIO()
        decoded.image.save(buffer, format="JPEG", quality=80)
    except (ImageError, OSError, ValueError, MemoryError):
        return None
    return "data:image/jpeg;base64," + b64encode(buffer.getvalue()).decode("ascii")


def data_json(value: Any) -> Markup:
    """JSON for a <script type="application/json"> element: no '<', '>' or '&' appear
    literally, so no text can close the element or open a comment in it."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return Markup(text)


def build_report(cat: Catalog, *, max_pixels: int) -> tuple[str, Tally]:
    """The page's HTML, and what it counted."""
    tally = Tally()
    # model and adapter_name are columns: the provenance JSON is not parsed per row
    for row in cat.export_rows(provenance=False):
        tally.add(row)
    sections = {
        "status": status_section(cat.status_counts(), tally),
        "failures": failures_section(cat.failures()),
        "emotions": emotions_section(tally),
        "folders": folders_section(tally),
        "alt_text": alt_text_section(tally),
        "uncertain": uncertain_section(tally, max_pixels),
        "provenance": provenance_section(tally),
        "adapters": adapters_section(cat.adapters()),
    }
    template = environment().get_template("report.html")
    html = template.render(
        where=cat.where,
        generated=datetime.now(UTC).isoformat(timespec="seconds"),
        images=tally.images,
        alt_marks=ALT_MARKS,
        **sections,
    )
    return html, tally


def environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,  # every catalog text is escaped, whatever the template's name
        undefined=jinja2.StrictUndefined,
    )
    env.filters["data_json"] = data_json
    return env


def charts():
    """web.report_charts, imported when a report is built (matplotlib takes a moment)."""
    from web import report_charts

    return report_charts
