"""`dicom-node` command line. Each subcommand lives in the module that does the work.

A command module exposes ``add_arguments(parser)`` and ``run(args) -> int``; this file only dispatches, so the
modules stay independent and importing the CLI stays cheap (modules are imported only when their command runs).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("dicom_node.service", "run the node (C-ECHO/C-STORE SCP, workers, outbound queue)"),
    "check-config": ("dicom_node.config_cli", "validate a configuration file (errors with file:line and key)"),
    "route": ("dicom_node.config_cli", "show which route matches a DICOM file, and why"),
    "status": ("dicom_node.admin", "list recent jobs and the outbound queue"),
    "retry": ("dicom_node.admin", "resubmit dead-lettered outbound items"),
    "echo": ("dicom_node.admin", "C-ECHO a remote AE"),
    "send": ("dicom_node.admin", "C-STORE files or directories to a remote AE"),
    "simulate": ("inference.simulator.cli", "simulate CT localizers and radiographs with ground truth"),
    "measure": ("dicom_node.measure_cli", "geometry and dose measurements of a DICOM file (from boxes)"),
    "infer": ("dicom_node.infer_cli", "run a detector on a DICOM file"),
    "build-engines": ("dicom_node.infer_cli", "pre-build TensorRT engines for every configured model"),
    "export-triton": ("dicom_node.triton_export", "write a Triton model repository from the configured model cards"),
    "evaluate": ("inference.training.evaluate", "score a model on a labelled dataset (mAP, AP50, RSNA)"),
    "train": ("inference.training.train", "train the reference region detector on simulated data"),
    "demo": ("dicom_node.demo", "end-to-end demo on embedded defaults"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dicom-node", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:  # import only the module of the command being run
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                print(f"dicom-node {name}: not available in this build ({exc})", file=sys.stderr)
                return 2
            add = getattr(module, f"add_{name.replace('-', '_')}_arguments", None) or module.add_arguments
            add(p)
            p.set_defaults(_module=module, _command=name)
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    run = getattr(args._module, f"run_{args._command.replace('-', '_')}", None) or args._module.run
    return int(run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
