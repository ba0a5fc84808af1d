"""``imgq``: the command-line client. Tables for people, ``--json`` for scripts.

The URL and key come from ``--url`` / ``--key`` or ``IMGQ_URL`` / ``IMGQ_KEY``. On any error the
server's message is printed to stderr and the exit status is 1 (2 for usage errors). Output cut
short by its reader (``imgq jobs | head``) ends quietly with status 141, as a program killed by
SIGPIPE does, instead of an error message about a broken pipe.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from imgq.client.http import TERMINAL, ApiError, ImgqClient, zip_dataset

PREDICT_WAIT_S = 30
"""How long ``imgq predict --wait`` asks the server to hold its answer (``Prefer: wait``)."""

DEFAULT_URL = "http://127.0.0.1:8000"
SPARK_BARS = "▁▂▃▄▅▆▇█"
"""The sparkline's bars, from an accuracy of 0 to one of 1."""
SPARK_GAP = "·"
"""The sparkline's mark for a slice of the window with no feedback."""
NONE = "—"
"""How a number the server did not compute (null) is shown."""
CLASS_ROWS = 20
"""Classes ``imgq monitor`` lists at most (the most predicted first; ``--json`` has all)."""
REASON_WIDTH = 60
"""Characters of an event's reason ``imgq events`` shows at most (``--json`` has it all)."""
WORDS = {"true": True, "false": False, "null": None}
"""Values of ``imgq policy --set KEY=VALUE`` read as JSON's words rather than as text."""
PIPE_CLOSED_STATUS = 128 + signal.SIGPIPE
"""Exit status when the reader of the output went away: what a shell reports for a program
killed by SIGPIPE (``cat`` in ``cat big | head``), so ``set -o pipefail`` scripts see the same."""


def _plain(text: str) -> str:
    """Docstring text as a terminal shows it: without reStructuredText's double backticks."""
    return text.replace("``", "")


def _print_json(document: Any) -> None:
    print(json.dumps(document, indent=2, sort_keys=True, default=str))


def _table(rows: list[list[Any]], header: list[str]) -> None:
    cells = [header, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def cmd_predict(client: ImgqClient, args: argparse.Namespace) -> Any:
    """Submit images; with --wait, wait for and show the labels."""
    job = client.predict(
        [Path(p) for p in args.images],
        wait_s=PREDICT_WAIT_S if args.wait else 0,
        model=args.model,
        version=args.version,
        top_k=args.top_k,
    )
    if not args.wait:
        return job
    # Held by the server until the job ends (Prefer: wait), else long-polled: never a tight loop.
    document = job if job["status"] in TERMINAL else list(client.follow(job["id"], 30))[-1]
    if document["status"] != "succeeded":
        raise ApiError(
            0,
            document["error"]["code"] if document["error"] else document["status"],
            f"job {document['id']} {document['status']}: "
            f"{(document['error'] or {}).get('message', '')}",
        )
    if args.json:
        return document
    result = document["result"]
    rows = [
        [path, rank + 1, p["label"], f"{p['score']:.4f}"]
        for path, predictions in zip(args.images, result["predictions"], strict=True)
        for rank, p in enumerate(predictions)
    ]
    print(f"model {result['model']} v{result['version']}")
    _table(rows, ["image", "rank", "label", "score"])
    return None


def _follow_training(client: ImgqClient, job_id: str, quiet: bool) -> dict[str, Any]:
    """Follow a fine-tune job as a progress bar (none when ``quiet``) until it ends; its last
    document, or an ``ApiError`` when it did not succeed."""
    with tqdm(total=1, unit="epoch", desc="queued", disable=quiet, file=sys.stderr) as bar:
        for document in client.follow(job_id):
            progress = document.get("progress") or {}
            if progress:
                bar.total = progress["total_epochs"]
                bar.set_description(progress["phase"])
                bar.update(progress["epoch"] - bar.n)
                bar.set_postfix(
                    {k: progress[k] for k in ("loss", "val_accuracy", "eta_s") if k in progress}
                )
    if document["status"] != "succeeded":
        error = document.get("error") or {}
        raise ApiError(
            0,
            error.get("code", document["status"]),
            f"job {document['id']} {document['status']}: {error.get('message', '')}",
        )
    return document


def cmd_finetune(client: ImgqClient, args: argparse.Namespace) -> Any:
    """Zip the folder and upload it with a progress bar (or name a stored dataset), then follow
    training as a progress bar."""
    archive = zip_dataset(Path(args.dataset)) if args.dataset is not None else None
    fields = {
        "model": args.model,
        "base": args.base,
        "image_size": args.image_size,
        "epochs": args.epochs,
        "fine_tune_epochs": args.fine_tune_epochs,
        "batch_size": args.batch_size,
        "augment": args.augment,
        "seed": args.seed,
        "budget_s": args.budget_s,
        "teacher": args.teacher,
        "dataset_name": args.dataset_name,
        "data_mode": args.data_mode,
        "dataset_version": args.dataset_version,
    }
    quiet = args.json
    if archive is None:
        job = client.finetune(None, fields)
    else:
        with tqdm(
            total=len(archive),
            unit="B",
            unit_scale=True,
            desc="upload",
            disable=quiet,
            file=sys.stderr,
        ) as upload:

            def sent(done: int, total: int) -> None:
                upload.total = total  # the body: the archive and the multipart framing
                upload.update(done - upload.n)

            job = client.finetune(archive, fields, sent)
    if not args.wait:
        return job
    document = _follow_training(client, job["id"], quiet)
    if quiet:
        return document
    result = document["result"]
    print(
        f"{result['model']} v{result['version']}: accuracy {result['metrics']['accuracy']:.3f}"
        f", {'activated' if result['activated'] else 'candidate'} "
        f"({result['activation_reason']})"
    )
    return None


def cmd_jobs(client: ImgqClient, args: argparse.Namespace) -> Any:
    """List your jobs, newest first."""
    page = client.jobs(status=args.status, type=args.type, limit=args.limit)
    if args.json:
        return page
    _table(
        [[j["id"], j["type"], j["status"], j["created_at"]] for j in page["jobs"]],
        ["id", "type", "status", "created"],
    )
    return None


def cmd_job(client: ImgqClient, args: argparse.Namespace) -> Any:
    """Show one job (always as JSON: it is a nested document)."""
    _print_json(client.job(args.id))
    return None


def cmd_models(client: ImgqClient, args: argparse.Namespace) -> Any:
    """List models and versions."""
    models = client.models()
    if args.json:
        return models
    rows = [
        [
            m["name"],
            m.get("owner", ""),
            v["version"],
            "*" if v["active"] else "",
            v["backbone"],
            _number((v.get("metrics") or {}).get("accuracy")),
        ]
        for m in models
        for v in m["versions"]
    ]
    _table(rows, ["model", "owner", "version", "active", "backbone", "accuracy"])
    return None


def cmd_datasets(client: ImgqClient, args: argparse.Namespace) -> Any:
    """List your stored datasets with their latest version's size."""
    datasets = client.datasets()
    if args.json:
        return datasets
    rows = [
        [
            d["name"],
            d["owner"],
            d["version"],
            d["images"],
            d["classes"],
            d["storage_bytes"],
            d["owner_storage_bytes"],
        ]
        for d in datasets
    ]
    _table(rows, ["dataset", "owner", "version", "images", "classes", "bytes", "owner bytes"])
    return None


def _created(unix_time: float) -> str:
    """A Unix time (a version's creation, an event) as people read it (UTC, to the second)."""
    return datetime.fromtimestamp(unix_time, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def cmd_dataset(client: ImgqClient, args: argparse.Namespace) -> Any:
    """Show a dataset's versions, then the images of each class and split in its latest."""
    dataset = client.dataset(args.name)
    if args.json:
        return dataset
    versions = dataset["versions"]
    print(f"dataset {dataset['name']} of {dataset['owner']}: {dataset['storage_bytes']} bytes")
    rows = [
        [
            v["version"],
            v["source"],
            "" if v.get("parent") is None else v["parent"],
            v["images"],
            len(v["classes"]),
            _created(v["created_at"]),
            v["fingerprint"][:12],
        ]
        for v in versions
    ]
    _table(rows, ["version", "source", "parent", "images", "classes", "created", "fingerprint"])
    if not versions:
        return None
    latest = max(versions, key=lambda v: v["version"])
    print(f"\nv{latest['version']}: {latest['images']} images")
    splits = ["train", "validation", "test"]
    _table(
        [
            [label, *[counts[split] for split in splits]]
            for label, counts in sorted(latest["classes"].items())
        ],
        ["class", *splits],
    )
    return None


def cmd_activate(client: ImgqClient, args: argparse.Namespace) -> Any:
    """Make a version the active one."""
    model = client.activate(args.name, args.version)
    if args.json:
        return model
    print(f"{model['name']}: active version is now {model['active_version']}")
    return None


def cmd_export(client: ImgqClient, args: argparse.Namespace) -> Any:
    """Export a version, wait for the export job, and save the file."""
    job = client.request_export(args.name, args.version, args.format)
    document = list(client.follow(job["id"]))[-1]
    if document["status"] != "succeeded":
        error = document.get("error") or {}
        raise ApiError(
            0,
            error.get("code", document["status"]),
            f"export {document['id']} {document['status']}: {error.get('message', '')}",
        )
    Path(args.output).write_bytes(client.download_export(args.name, args.version, args.format))
    report = document["result"]
    if args.json:
        return report
    print(
        f"{args.output}: {report['size_bytes']} bytes, agreement {report['agreement']:.3f}, "
        f"accuracy {report['accuracy']:.3f} (Keras {report['keras_accuracy']:.3f})"
        f"{'' if report['within_margin'] else ', OUTSIDE the accuracy margin'}"
    )
    return None


def sparkline(series: Sequence[float | None]) -> str:
    """Accuracies between 0 and 1 as one bar each (``▁`` for 0, ``█`` for 1), ``·`` for None."""
    top = len(SPARK_BARS) - 1
    return "".join(
        SPARK_GAP if value is None else SPARK_BARS[round(min(max(value, 0.0), 1.0) * top)]
        for value in series
    )


def _number(value: float | None, spec: str = ".3f") -> str:
    """A number for a table, ``—`` when the server had none."""
    return NONE if value is None else format(value, spec)


def _verdict(drifted: bool | None) -> str:
    """A drift test's answer: ``yes``, ``no``, or ``n/a`` when it could not run."""
    return "n/a" if drifted is None else "yes" if drifted else "no"


def _class_rows(classes: Mapping[str, Any]) -> tuple[list[list[Any]], int]:
    """Rows of the class table, the most predicted (then most expected) first, at most
    ``CLASS_ROWS``; with how many classes were left out."""
    observed: Mapping[str, int] = classes["observed"]
    reference: Mapping[str, float] = classes["reference"] or {}
    total = sum(observed.values())
    labels = sorted(
        set(observed) | set(reference),
        key=lambda label: (-observed.get(label, 0), -reference.get(label, 0.0), label),
    )
    rows = [
        [
            label,
            observed.get(label, 0),
            _number(observed.get(label, 0) / total if total else None, ".1%"),
            _number(reference.get(label) if classes["reference"] is not None else None, ".1%"),
        ]
        for label in labels[:CLASS_ROWS]
    ]
    return rows, max(0, len(labels) - CLASS_ROWS)


def cmd_monitor(client: ImgqClient, args: argparse.Namespace) -> Any:
    """Show a version's drift from its test split and its online accuracy from feedback."""
    version = args.version
    if version is None:
        version = client.model(args.name).get("active_version")
        if version is None:
            raise ApiError(0, "no_active_version", f"{args.name} has no active version.")
    report = client.monitoring(args.name, version, args.window)
    if args.json:
        return report
    feedback = report["feedback"]
    print(
        f"{report['model']} v{report['version']}: {report['predictions']}/{report['window']} "
        f"predictions in window, test accuracy {_number(report['test_accuracy'])}, "
        f"online accuracy {_number(feedback['accuracy'])} ({feedback['count']} with feedback)"
    )
    classes, confidence = report["classes"], report["confidence"]
    print()
    _table(
        [
            [
                name,
                _number(test["statistic"]),
                _number(test["p_value"], ".3g"),
                _verdict(test["drifted"]),
            ]
            for name, test in (("classes (chi-square)", classes), ("confidence (KS)", confidence))
        ],
        ["test", "statistic", "p-value", "drifted"],
    )
    print(
        f"drifted: {_verdict(report['drifted'])}; mean confidence "
        f"{_number(confidence['observed_mean'])} "
        f"(reference {_number(confidence['reference_mean'])})"
    )
    print()
    rows, left_out = _class_rows(classes)
    _table(rows, ["class", "observed", "share", "reference"])
    if left_out:
        print(f"... and {left_out} more classes (--json lists them all)")
    if feedback["per_class"]:
        print()
        _table(
            [
                [label, found["count"], found["correct"], _number(found["accuracy"])]
                for label, found in feedback["per_class"].items()
            ],
            ["true class", "feedback", "correct", "accuracy"],
        )
    series = feedback.get("accuracy_series") or []
    print(f"\nonline accuracy, oldest to newest: {sparkline(series) if series else '(none yet)'}")
    return None


def cmd_retrain(client: ImgqClient, args: argparse.Namespace) -> Any:
    """Queue a retrain of a model on its grown dataset; with --wait, follow its training and
    show the new version and the images that are new to it."""
    overrides: dict[str, Any] = {
        k: v
        for k, v in (("epochs", args.epochs), ("fine_tune_epochs", args.fine_tune_epochs))
        if v is not None
    }
    if args.force:
        overrides["force"] = True
    job = client.retrain(args.name, overrides)
    if not args.wait:
        if args.json:
            return job
        print(f"{args.name}: retrain queued as job {job['id']}")
        return None
    document = _follow_training(client, job["id"], args.json)
    if args.json:
        return document
    result = document["result"]
    print(
        f"{result['model']} v{result['version']}: accuracy {result['metrics']['accuracy']:.3f}"
        f", activated {str(result['activated']).lower()} ({result['activation_reason']})"
    )
    new = (result.get("retrain") or {}).get("new_images") or {}
    since = new.get("since_version")
    after = "" if since is None else f" since dataset v{since}"
    print(f"new images{after}: {new.get('images', 0)}")
    for kind, counts in (("class", new.get("per_class")), ("source", new.get("per_source"))):
        if counts:
            print()
            _table([[key, count] for key, count in counts.items()], [kind, "new images"])
    return None


def _canary_state(model: Mapping[str, Any]) -> str:
    """A line on the model's canary: which version, its share of traffic, since when and by."""
    canary = model.get("canary")
    active = model.get("active_version")
    if canary is None:
        return f"{model['name']}: no canary; unpinned jobs go to the active version {active}"
    return (
        f"{model['name']}: version {canary['version']} in canary with "
        f"{canary['traffic'] * 100:g}% of unpinned jobs (active version {active}), since "
        f"{_created(canary['started_at'])} by {canary.get('by') or NONE}"
    )


def cmd_canary(client: ImgqClient, args: argparse.Namespace) -> Any:
    """Send a share of the model's unpinned jobs to a version, or end its canary; then show
    the model's canary."""
    if args.stop:
        client.stop_canary(args.name, args.version)
        model = client.model(args.name)
    else:
        model = client.start_canary(args.name, args.version, args.traffic)
    if args.json:
        return model
    print(_canary_state(model))
    return None


def _value(text: str) -> Any:
    """A policy value from its text: an int, a finite float, true/false/null, or the text."""
    if text.lower() in WORDS:
        return WORDS[text.lower()]
    for kind in (int, float):
        try:
            number = kind(text)
        except ValueError:
            continue
        if math.isfinite(number):
            return number
    return text


def _assignment(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` as a key and its value (``_value``); a usage error otherwise."""
    key, equals, value = text.partition("=")
    if not equals or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), _value(value.strip())


def _setting(value: Any) -> str:
    """A policy value for a table, as it is written with --set (``—`` for null)."""
    if value is None:
        return NONE
    return json.dumps(value) if isinstance(value, bool) else str(value)


def cmd_policy(client: ImgqClient, args: argparse.Namespace) -> Any:
    """Show the model's rollout policy, set it from KEY=VALUE pairs, or turn it off."""
    if args.off:
        client.delete_policy(args.name)
        if args.json:
            _print_json(None)  # the policy there now is none
        else:
            print(f"{args.name}: rollout policy off")
        return None
    policy = client.set_policy(args.name, dict(args.set)) if args.set else client.policy(args.name)
    if args.json:
        return policy
    _table([[key, _setting(value)] for key, value in policy.items()], ["setting", "value"])
    return None


def _clip(text: str | None, width: int = REASON_WIDTH) -> str:
    """Text on one line of at most ``width`` characters (``…`` where it was cut)."""
    line = " ".join((text or "").split())
    return line if len(line) <= width else f"{line[: width - 1]}…"


def cmd_events(client: ImgqClient, args: argparse.Namespace) -> Any:
    """List the model's events (publishes, activations, canaries, policy changes), newest
    first."""
    page = client.events(args.name, args.limit)
    if args.json:
        return page
    rows = [
        [
            _created(e["at"]),
            e["event"],
            e.get("by") or "",
            "" if e.get("version") is None else e["version"],
            _clip(e.get("reason")),
        ]
        for e in page["events"]
    ]
    _table(rows, ["time", "event", "by", "version", "reason"])
    return None


def _monitor_arguments(monitor: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the arguments of ``imgq monitor`` to its parser, and return it."""
    monitor.add_argument("name", metavar="MODEL")
    monitor.add_argument(
        "version", type=int, nargs="?", metavar="VERSION", help="default: the active version"
    )
    monitor.add_argument(
        "--window", type=int, default=1000, help="newest predictions to test (default 1000)"
    )
    return monitor


def _retrain_arguments(retrain: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the arguments of ``imgq retrain`` to its parser, and return it."""
    retrain.add_argument("name", metavar="MODEL")
    retrain.add_argument("--epochs", type=int, help="default: the active version's")
    retrain.add_argument("--fine-tune-epochs", type=int, help="default: the active version's")
    retrain.add_argument(
        "--force", action="store_true", help="retrain even when the dataset has not changed"
    )
    retrain.add_argument("--wait", action="store_true", help="follow the training")
    return retrain


def _canary_arguments(canary: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the arguments of ``imgq canary`` to its parser, and return it."""
    canary.add_argument("name", metavar="MODEL")
    canary.add_argument("version", type=int, metavar="VERSION")
    action = canary.add_mutually_exclusive_group(required=True)
    action.add_argument(
        "--traffic", type=float, help="share of the unpinned jobs the version gets (0 < t <= 0.5)"
    )
    action.add_argument("--stop", action="store_true", help="end the version's canary")
    return canary


def _policy_arguments(policy: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the arguments of ``imgq policy`` to its parser, and return it."""
    policy.add_argument("name", metavar="MODEL")
    action = policy.add_mutually_exclusive_group()
    action.add_argument(
        "--set",
        action="append",
        type=_assignment,
        metavar="KEY=VALUE",
        help="replace the policy with these settings (the others take their defaults): "
        "retrain_after_feedback, retrain_on_drift, canary_traffic, promote, "
        "min_canary_feedback, max_canary_hours",
    )
    action.add_argument("--off", action="store_true", help="turn the policy off")
    return policy


def _events_arguments(events: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the arguments of ``imgq events`` to its parser, and return it."""
    events.add_argument("name", metavar="MODEL")
    events.add_argument("--limit", type=int, default=20, help="newest events (default 20)")
    return events


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(prog="imgq", description=_plain(__doc__.split("\n\n")[0]))
    parser.add_argument("--url", default=os.environ.get("IMGQ_URL", DEFAULT_URL))
    parser.add_argument("--key", default=os.environ.get("IMGQ_KEY"))
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser("predict", help="classify images")
    predict.add_argument("images", nargs="+")
    predict.add_argument("--model")
    predict.add_argument("--version", type=int)
    predict.add_argument("--top-k", type=int)
    predict.add_argument("--wait", action="store_true", help="wait and show the labels")
    predict.set_defaults(run=cmd_predict)
    finetune = commands.add_parser(
        "finetune", help="train a new version from a folder or a stored dataset"
    )
    finetune.add_argument(
        "dataset", nargs="?", metavar="FOLDER", help="folder of class sub-folders of images"
    )
    finetune.add_argument("--model", required=True)
    finetune.add_argument(
        "--dataset-name", help="the dataset the upload is stored in; without FOLDER, its latest"
    )
    finetune.add_argument(
        "--append",
        dest="data_mode",
        action="store_const",
        const="append",
        help="add the upload to the dataset's latest version instead of replacing its images",
    )
    finetune.add_argument(
        "--dataset-version", help="NAME:VERSION of a stored dataset to train on (no FOLDER)"
    )
    finetune.add_argument("--base", default="efficientnet_lite0")
    for flag, kind in (
        ("--image-size", int),
        ("--epochs", int),
        ("--fine-tune-epochs", int),
        ("--batch-size", int),
        ("--seed", int),
        ("--budget-s", int),
    ):
        finetune.add_argument(flag, type=kind)
    finetune.add_argument("--teacher", help="MODEL:VERSION to distil from")
    finetune.add_argument("--augment", action="store_true", default=None)
    finetune.add_argument("--no-wait", dest="wait", action="store_false")
    finetune.set_defaults(run=cmd_finetune)
    jobs = commands.add_parser("jobs", help="list your jobs")
    jobs.add_argument("--status")
    jobs.add_argument("--type")
    jobs.add_argument("--limit", type=int, default=20)
    jobs.set_defaults(run=cmd_jobs)
    job = commands.add_parser("job", help="show one job")
    job.add_argument("id")
    job.set_defaults(run=cmd_job)
    commands.add_parser("models", help="list models").set_defaults(run=cmd_models)
    commands.add_parser("datasets", help="list your datasets").set_defaults(run=cmd_datasets)
    dataset = commands.add_parser("dataset", help="show a dataset's versions and classes")
    dataset.add_argument("name")
    dataset.set_defaults(run=cmd_dataset)
    activate = commands.add_parser("activate", help="activate a version of your model")
    activate.add_argument("name")
    activate.add_argument("version", type=int)
    activate.set_defaults(run=cmd_activate)
    export = commands.add_parser("export", help="export a version (saved_model, tflite, ...)")
    export.add_argument("name")
    export.add_argument("version", type=int)
    export.add_argument(
        "format", choices=["saved_model", "tflite", "tflite_dynamic", "tflite_int8"]
    )
    export.add_argument("-o", "--output", required=True)
    export.set_defaults(run=cmd_export)
    for command, summary, arguments, run in (
        ("monitor", "show a version's drift and online accuracy", _monitor_arguments, cmd_monitor),
        ("retrain", "retrain a model on its grown dataset", _retrain_arguments, cmd_retrain),
        ("canary", "start, change or stop a version's canary", _canary_arguments, cmd_canary),
        ("policy", "show, set or turn off a model's rollout policy", _policy_arguments, cmd_policy),
        ("events", "list a model's events, newest first", _events_arguments, cmd_events),
    ):
        arguments(commands.add_parser(command, help=summary)).set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit status is 0 on success, 1 on any error (2 for usage errors),
    ``PIPE_CLOSED_STATUS`` when the output's reader closed the pipe early."""
    try:
        try:
            status = _run(argv)
        finally:  # also after --help's SystemExit: a closed pipe shows on the buffered write
            sys.stdout.flush()
    except BrokenPipeError:
        _discard_stdout()
        return PIPE_CLOSED_STATUS
    return status


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's own flush at exit finds no closed
    pipe and prints nothing (the Python documentation's remedy for ``SIGPIPE``)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _run(argv: Sequence[str] | None) -> int:
    """Parse the arguments and run the command; errors become a message and a status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "finetune" and not any(
        (args.dataset, args.dataset_version, args.dataset_name)
    ):
        parser.error("finetune: give a FOLDER, --dataset-version or --dataset-name")
    if not args.key:
        print("imgq: no API key: pass --key or set IMGQ_KEY", file=sys.stderr)
        return 2
    try:
        output = args.run(ImgqClient(args.url, args.key), args)
    except ApiError as exc:
        print(f"imgq: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        raise  # our stdout closed (the network's are wrapped by requests): main handles it
    except OSError as exc:
        print(f"imgq: {exc}", file=sys.stderr)
        return 1
    if output is not None:
        _print_json(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
