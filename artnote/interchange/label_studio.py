"""Label Studio: artnote's annotations as pre-annotations, reviewed tasks back as corrections.

Config (labeling_config): the image (`$image`); TextAreas `alt_text`, `description` and
`explanation` (editable, one text each); Choices `dominant_emotion`, one of the nine
ArtEmis emotions in artnote.emotions order; Choices `approve` with the one checkbox
"approved", which approves the whole annotation as it then stands (the CSV import's
status column).

Tasks (write_tasks), a JSON array, one task per image:
    {"data": {"image": URL, "artnote_sha256": ..., "artnote_path": ..., "artnote_image_id": ...,
              "artnote_status": "draft|corrected|approved"},
     "predictions": [{"model_version": "MODEL[+ADAPTER][@HASH]", "result": [
        {"from_name": "alt_text", "to_name": "image", "type": "textarea",
         "value": {"text": ["..."]}}, ... description, explanation ...,
        {"from_name": "dominant_emotion", "to_name": "image", "type": "choices",
         "value": {"choices": ["awe"]}}]}]}
The prediction holds the current values (corrections included), so annotators start from
them. URL: IMAGE_ROOT + the URL-quoted path under the collection; without an image root,
Label Studio's own file serving, `/data/local-files/?d=COLLECTION/PATH` (COLLECTION: the
collection folder's name), which Label Studio 1.23 serves given
LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true, LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=the
folder that holds the collection folder, and a "Local files" source storage on the project
whose absolute path is the collection folder (it must be below the document root, not it).

Back (import_label_studio): Label Studio's "JSON" export (not JSON-MIN): a list of tasks
with `data` and `annotations`. Per task the newest annotation not cancelled (by
updated_at, created_at, then id) counts; the image is found by data.artnote_sha256 (one
no longer in the catalog is an error: the file changed since), then data.artnote_path.
A text or emotion becomes a correction when it differs from the prediction the annotator
was shown (so a later correction made in artnote stands) and from the catalog; a result
left out changes nothing; "approved" ticked approves, unticked withdraws nothing. Checks
and limits are the CSV import's (artnote.corrections). Reviews are recorded with source
"label-studio", for the annotator when the export names one (completed_by expanded to an
object; Label Studio's plain export gives only user ids).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

from artnote.catalog import Catalog
from artnote.corrections import (
    CorrectionError,
    ImportReport,
    ReviewItem,
    RowMatcher,
    finish_import,
)
from artnote.emotions import EMOTIONS, normalise_emotion

SOURCE = "label-studio"  # reviews.source: where the edit was made
TO_NAME = "image"
TEXTS = ("alt_text", "description", "explanation")  # TextArea names = CSV columns
EMOTION = "dominant_emotion"
APPROVE, APPROVED = "approve", "approved"  # the checkbox: Choices name, Choice value
LOCAL_FILES = "/data/local-files/?d="
# json.loads holds the whole export in memory, several times its size: refuse beyond this
# (export fewer tasks at a time) rather than exhaust the machine.
MAX_EXPORT_BYTES = 512 * 1024 * 1024
_HEADERS = {
    "alt_text": "Alt text (aim for 125 characters, at most 250)",
    "description": "Long description",
    EMOTION: "Dominant emotion",
    "explanation": "Why this emotion",
}


def labeling_config() -> str:
    """The project's labeling config (XML), matching the predictions of write_tasks."""

    def header(name: str) -> str:
        return f"  <Header value={quoteattr(_HEADERS[name])}/>"

    def textarea(name: str, rows: int) -> list[str]:
        return [
            header(name),
            f'  <TextArea name="{name}" toName="{TO_NAME}" editable="true" maxSubmissions="1"'
            f' rows="{rows}"/>',
        ]

    choices = [f"    <Choice value={quoteattr(e)}/>" for e in EMOTIONS]
    return "\n".join(
        [
            "<View>",
            f'  <Image name="{TO_NAME}" value="$image" zoom="true"/>',
            *textarea("alt_text", 2),
            *textarea("description", 6),
            header(EMOTION),
            f'  <Choices name="{EMOTION}" toName="{TO_NAME}" choice="single-radio" '
            'showInline="true">',
            *choices,
            "  </Choices>",
            *textarea("explanation", 3),
            f'  <Choices name="{APPROVE}" toName="{TO_NAME}" choice="multiple">',
            f'    <Choice value="{APPROVED}" hint="Approve the whole annotation as it stands"/>',
            "  </Choices>",
            "</View>",
            "",
        ]
    )


def write_tasks(
    rows: Iterable[Mapping[str, Any]], out: TextIO, *, image_root: str | None = None
) -> int:
    """Write Catalog.export_rows() rows as a JSON array of Label Studio tasks, one at a
    time (never the whole list in memory); return how many."""
    count = 0
    out.write("[")
    for row in rows:
        out.write(",\n" if count else "\n")
        out.write(json.dumps(_task(row, image_root)))
        count += 1
    out.write("\n]\n" if count else "]\n")
    return count


def _task(row: Mapping[str, Any], image_root: str | None) -> dict[str, Any]:
    relpath = row["relpath"]
    if image_root is not None:
        url = f"{image_root.rstrip('/')}/{quote(relpath)}"
    else:
        url = LOCAL_FILES + quote(f"{os.path.basename(os.path.normpath(row['root']))}/{relpath}")
    result: list[dict[str, Any]] = [
        {"from_name": n, "to_name": TO_NAME, "type": "textarea", "value": {"text": [row[n]]}}
        for n in TEXTS
        if row.get(n)
    ]
    if row.get(EMOTION):
        value = {"choices": [row[EMOTION]]}
        result.append({"from_name": EMOTION, "to_name": TO_NAME, "type": "choices", "value": value})
    version = row.get("model") or "unknown"
    if row.get("adapter_name"):
        version += f"+{row['adapter_name']}"
    if row.get("adapter"):
        version += f"@{row['adapter'][:12]}"
    data = {
        "image": url,
        "artnote_sha256": row["sha256"],
        "artnote_path": row["path"],
        "artnote_image_id": row["image_id"],
        "artnote_status": row.get("status") or "draft",
    }
    for key in ("object_number", "title", "maker"):  # the museum's record, to show beside it
        if row.get(key):
            data[key] = row[key]
    return {"data": data, "predictions": [{"model_version": version, "result": result}]}


def import_label_studio(
    catalog: Catalog,
    path: Path,
    by: str | None,
    skip_bad: bool = False,
    *,
    fallback_by: str | None = None,
) -> ImportReport:
    """Turn a Label Studio JSON export's changes into corrections and approvals.

    Validated whole first, then written in one transaction: a bad task (unknown image,
    emotion not among the nine, wrong types) is listed in report.bad (Label Studio's task
    id, else its position) and nothing is written, unless `skip_bad`. A file that is not
    a JSON list of tasks raises CorrectionError. Reviews are recorded for `by`; without
    it, for the annotator the export names (email, else name) when one person made every
    annotation imported, else for `fallback_by`."""
    tasks = _load(path)
    matcher = RowMatcher(catalog)
    report = ImportReport()
    items: list[ReviewItem] = []
    approved_on: dict[int, int] = {}
    annotators: set[str | None] = set()
    for position, task in enumerate(tasks, 1):
        report.rows += 1
        number = task.get("id") if isinstance(task, dict) else None
        number = number if isinstance(number, int) else position
        try:
            record, annotator = _record(task)
            task_items = matcher.items(record, from_csv=False) if record else []
        except CorrectionError as exc:
            report.bad.append((number, str(exc)))
            continue
        report.unchanged_rows += not task_items
        if task_items:
            annotators.add(annotator)
        items += task_items
        approved_on.update((i[0], number) for i in task_items if i[1] == "approval")
    if by is None:
        by = annotators.pop() if len(annotators) == 1 else None
        by = by or fallback_by
    return finish_import(
        catalog, matcher, report, items, approved_on, by=by, source=SOURCE, skip_bad=skip_bad
    )


def _load(path: Path) -> list[Any]:
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_EXPORT_BYTES + 1)
    except OSError as exc:
        raise CorrectionError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_EXPORT_BYTES:
        raise CorrectionError(
            f"{path} is over {MAX_EXPORT_BYTES >> 20} MB; export fewer tasks at a time"
        )
    try:
        tasks = json.loads(raw)  # bytes: UTF-8, -16 or -32, as RFC 8259 allows
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        what = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CorrectionError(f"{path} is not JSON ({what})") from None
    if not isinstance(tasks, list):
        raise CorrectionError(
            f"{path} is not a Label Studio JSON export (a list of tasks) but a {_kind(tasks)}"
        )
    return tasks


def _record(task: Any) -> tuple[dict[str, str] | None, str | None]:
    """The CSV-shaped record (see RowMatcher.items) of a task's newest annotation, and its
    annotator; (None, None) when nobody annotated the task."""
    if not isinstance(task, dict):
        raise CorrectionError(f"a task is a JSON object, not a {_kind(task)}")
    data = task.get("data")
    if not isinstance(data, dict):
        raise CorrectionError("no data object (is this a Label Studio JSON export?)")
    sha, path = data.get("artnote_sha256"), data.get("artnote_path")
    if not isinstance(sha, str | None) or not isinstance(path, str | None) or not (sha or path):
        raise CorrectionError("not an artnote task: no artnote_sha256 or artnote_path text in data")
    annotations = task.get("annotations")
    if not isinstance(annotations, list):
        raise CorrectionError("no annotations list (export as JSON, not JSON-MIN or CSV)")
    if not all(isinstance(a, dict) for a in annotations):
        raise CorrectionError("an annotation is not a JSON object")
    done = [a for a in annotations if not a.get("was_cancelled")]
    if not done:
        return None, None
    newest = max(done, key=lambda a: (_text(a, "updated_at"), _text(a, "created_at"), _id(a)))
    given = _values(newest.get("result"), "annotation")
    # What the annotator was shown: Label Studio's export puts the prediction an annotation
    # started from in the annotation and lists only prediction ids in the task; tasks
    # fetched through the API hold the predictions themselves.
    predictions = task.get("predictions")
    candidates = [newest.get("prediction"), *(predictions if isinstance(predictions, list) else [])]
    shown = next(
        (
            _values(p["result"], "prediction")
            for p in candidates
            if isinstance(p, dict) and isinstance(p.get("result"), list)
        ),
        {},
    )
    record = {"sha256": sha or "", "path": path or ""}
    for name in (*TEXTS, EMOTION):
        if name not in given:
            continue
        value = given[name]
        if len(value) != 1:
            raise CorrectionError(f"{name} has {len(value)} values in the annotation, not one")
        if name in shown and _same(name, value[0], shown[name]):
            continue
        record[name] = value[0]
    if APPROVED in given.get(APPROVE, ()):
        record["status"] = APPROVED
    return record, _annotator(newest.get("completed_by"))


def _values(result: Any, what: str) -> dict[str, list[str]]:
    """from_name -> texts or choices of artnote's controls in a result; others ignored."""
    if not isinstance(result, list):
        raise CorrectionError(f"the {what}'s result is a {_kind(result)}, not a list")
    out: dict[str, list[str]] = {}
    for item in result:
        name = item.get("from_name") if isinstance(item, dict) else None
        if name not in (*TEXTS, EMOTION, APPROVE):
            continue
        key = "text" if name in TEXTS else "choices"
        value = item.get("value")
        value = value.get(key) if isinstance(value, dict) else None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise CorrectionError(f"{name} in the {what} has no list of texts as value.{key}")
        if name in out:
            raise CorrectionError(f"{name} appears twice in the {what}")
        out[name] = value
    return out


def _same(name: str, value: str, shown: list[str]) -> bool:
    if len(shown) != 1:
        return False
    if name == EMOTION:
        return normalise_emotion(value) == normalise_emotion(shown[0])
    return value.strip() == shown[0].strip()


def _annotator(completed_by: Any) -> str | None:
    """Label Studio's export names the annotator only when asked to expand completed_by
    (an object with email and names); by default it is a user id, which names nobody."""
    if isinstance(completed_by, str):
        return completed_by.strip() or None
    if not isinstance(completed_by, dict):
        return None
    name = f"{completed_by.get('first_name') or ''} {completed_by.get('last_name') or ''}"
    email = completed_by.get("email")
    return (email if isinstance(email, str) else "").strip() or name.strip() or None


def _text(mapping: Mapping[str, Any], key: str) -> str:
    value = mapping.get(key)
    return value if isinstance(value, str) else ""


def _id(mapping: Mapping[str, Any]) -> int:
    value = mapping.get("id")
    return value if isinstance(value, int) else 0


def _kind(value: Any) -> str:
    return {dict: "JSON object", list: "JSON list", str: "text", type(None): "null"}.get(
        type(value), type(value).__name__
    )
