"""`dicom-node check-config` and `dicom-node route`: validate a configuration, explain which route a file takes.

Both print no PHI: `route` shows only the values of attributes the rules reference, and redacts patient
identifiers (see ``dicom_node.routing.is_phi``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from dicom_node.config import ConfigError, load_config, summarize
from dicom_node.routing import select_route
from inference.modelcard import ModelCardError, load_card
from nodecore.config_schema import OUTPUT_KINDS, NodeConfig
from nodecore.sopclasses import uid_name


def add_check_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="YAML configuration file")
    parser.add_argument(
        "--storage", type=Path, default=None, help="storage directory overriding node.storage"
    )


def run_check_config(args: argparse.Namespace) -> int:
    """Exit 0 with a one-line summary, or 1 with every error as file:line: key: message (on stderr)."""
    try:
        config = load_config(args.config, storage_override=args.storage)
    except ConfigError as exc:
        for issue in exc.errors:
            print(issue, file=sys.stderr)
        print(f"{len(exc.errors)} error{'s' * (len(exc.errors) != 1)} in {args.config}", file=sys.stderr)
        return 1
    print(f"OK: {summarize(config)}")
    print(f"storage: {config.node.storage}")
    for warning in _card_warnings(config):
        print(f"warning: {warning}", file=sys.stderr)
    for route in config.routes:
        pipeline = route.pipeline.name if route.pipeline else "none"
        models = (
            ", ".join(d.model + (f" (gate {d.gate})" if d.gate else "") for d in route.pipeline.detectors)
            if (route.pipeline)
            else ""
        )
        outputs = ", ".join(k for k in OUTPUT_KINDS if k in route.outputs) or "none"
        print(
            f"route {route.name!r} ({route.source}): pipeline {pipeline}"
            + (f" [{models}]" if models else "")
            + f", outputs {outputs}, to {', '.join(route.destinations) or 'nowhere'}"
            + (", forwards the original" if route.forward_original else "")
        )
    return 0


def _card_warnings(config: NodeConfig) -> list[str]:
    """Problems found by loading each model card (a builtin may be installed after the configuration is
    written, so these are warnings) and detector class names the card does not define."""
    warnings: list[str] = []
    class_names: dict[str, set[str]] = {}
    for name, spec in config.models.items():
        where = f"{spec.source}: models.{name}.card" if spec.source else f"models.{name}.card"
        try:
            class_names[name] = set(load_card(spec.card).class_names)
        except (ModelCardError, OSError) as exc:
            warnings.append(f"{where}: the card cannot be loaded: {exc}")
    for i, route in enumerate(config.routes):
        for j, det in enumerate(route.pipeline.detectors if route.pipeline else ()):
            for model, classes, key in (
                (det.model, det.classes, "classes"),
                (det.gate, det.gate_classes, "gate_classes"),
            ):
                unknown = sorted(set(classes or ()) - class_names.get(model or "", set(classes or ())))
                if unknown:
                    warnings.append(
                        f"{route.source}: routes[{i}].pipeline.detectors[{j}].{key}: {', '.join(unknown)} not among "
                        f"model {model!r}'s classes ({', '.join(sorted(class_names[model or '']))})"
                    )
    return warnings


def add_route_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="DICOM file (read without pixel data)")
    parser.add_argument("--config", type=Path, required=True, help="YAML configuration file")
    parser.add_argument(
        "--calling-ae", default="", help="calling AE title to evaluate calling_ae conditions with"
    )


def _uid_name(uid: str) -> str:
    name = uid_name(uid)
    return f"{name} ({uid})" if name != uid else uid


def run_route(args: argparse.Namespace) -> int:
    """Print which route ``file`` takes and why (every condition with file:line), or the default action.

    Exit 0 when a decision was made (a route or the default action), 1 for a bad configuration or file.
    """
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for issue in exc.errors:
            print(issue, file=sys.stderr)
        return 1
    try:
        ds = dcmread(args.file, stop_before_pixels=True)
    except (OSError, InvalidDicomError) as exc:
        print(f"dicom-node route: cannot read {args.file} as DICOM: {exc}", file=sys.stderr)
        return 1
    meta = getattr(ds, "file_meta", None)
    sop_class = str(ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta else ""))
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta else ""
    print(f"file: {args.file}")
    print(f"  SOP class: {_uid_name(sop_class) if sop_class else 'absent'}")
    print(f"  transfer syntax: {_uid_name(syntax) if syntax else 'absent'}")
    print(f"  calling AE: {args.calling_ae.strip() or 'not given (calling_ae conditions are false)'}")
    if sop_class and sop_class not in config.node.sop_classes:
        print("  note: this SOP class is not in node.sop_classes: the node would refuse it at association")
    if syntax and config.node.transfer_syntaxes and syntax not in config.node.transfer_syntaxes:
        print("  note: this transfer syntax is not in node.transfer_syntaxes: the node would refuse it")
    decision = select_route(config, ds, args.calling_ae)
    for line in decision.reasons:
        print(line)
    if decision.route is not None:
        route = decision.route
        pipeline = route.pipeline.name if route.pipeline else "none"
        print(
            f"=> route {route.name!r}: pipeline {pipeline}, outputs {', '.join(k for k in OUTPUT_KINDS if k in route.outputs) or 'none'}, "
            f"destinations {', '.join(route.destinations) or 'none'}"
            + (", original forwarded" if route.forward_original else "")
        )
    else:
        default = decision.default
        assert default is not None
        target = f" to {', '.join(default.destinations)}" if default.action == "forward" else ""
        print(f"=> no route: default action {default.action}{target}")
    return 0
