"""The diagnostics' verbs of the `vlmswap` command (README, Diagnostics): one per diagnostic and
one that draws its figure over all cells. Kept apart from `vlmswap.cli`, which registers them."""

from __future__ import annotations

from pathlib import Path

from vlmswap.cli import _study, log  # the command's own helpers (cli imports this module when it builds its parser)


def cmd_profile(args) -> None:
    from vlmswap.diagnostics.profiling import profile_cell

    study = _study(args)
    profile_cell(study, study.cell(args.cell), Path(args.llm), Path(args.out), log=log)


def cmd_profile_figure(args) -> None:
    from vlmswap.diagnostics.profiling import write_profile_summary

    study = _study(args)
    rows = write_profile_summary([Path(p) for p in args.inputs], Path(args.out_csv), Path(args.out_png),
                                 f"Inference profiling ({study.name} study; paper App. G, Fig. 4)")
    log(f"profile: {len(rows)} rows -> {args.out_csv}, {args.out_png}")


def _trained_cell(args):
    """The study, the cell and its trained VLM (bf16 on a GPU, float32 on the CPU) a diagnostic reads."""
    from vlmswap.vlm import inference_placement, load_trained

    study = _study(args)
    cell = study.cell(args.cell)
    device, dtype = inference_placement()
    vlm = load_trained(study, cell, [Path(p) for p in args.checkpoint], Path(args.llm), Path(args.model), device, dtype)
    return study, cell, vlm


def cmd_collapse(args) -> None:
    from vlmswap.diagnostics.collapse import probe_cell

    study, cell, vlm = _trained_cell(args)
    probe_cell(study, cell, vlm, Path(args.index), Path(args.out), log=log)


def cmd_collapse_figure(args) -> None:
    from vlmswap.diagnostics.collapse import collapse_settings, write_collapse_summary

    study = _study(args)
    benchmark = collapse_settings(study)["benchmark"]
    write_collapse_summary([Path(p) for p in args.inputs], Path(args.results), Path(args.out_csv), Path(args.out_png),
                           Path(args.out_md), benchmark,
                           f"Collapse diagnosis ({study.name} study): is object position decodable along the pipeline?")
    log(f"collapse: {len(args.inputs)} cells -> {args.out_md}")


def cmd_fetch_probe_dataset(args) -> None:
    from vlmswap.atomic import write_json
    from vlmswap.diagnostics.probes import TORCHVISION, fetch_torchvision_dataset
    from vlmswap.study import ConfigError

    if args.dataset not in TORCHVISION:
        raise ConfigError(args.config, "diagnostics.linear_probe.datasets", f"{args.dataset!r} is not a torchvision "
                          "probe dataset (mini-classify is made by the mini world, not fetched)", list(TORCHVISION))
    fetch_torchvision_dataset(args.dataset, Path(args.dest))
    write_json(Path(args.out), {"dataset": args.dataset, "root": args.dest, "source": "torchvision.datasets"})
    log(f"fetched {args.dataset} into {args.dest}")


def cmd_probe(args) -> None:
    from vlmswap.diagnostics.probes import probe_cell

    study = _study(args)
    roots = {}
    for item in args.data:
        name, _, root = item.partition("=")
        if not root:
            raise SystemExit(f"probe: --data takes NAME=FOLDER pairs, got {item!r}")
        roots[name] = Path(root)
    probe_cell(study, study.cell(args.cell), [Path(p) for p in args.checkpoint], roots, Path(args.out), log=log)


def cmd_probe_figure(args) -> None:
    from vlmswap.diagnostics.probes import write_probe_summary

    summary = write_probe_summary(_study(args), [Path(p) for p in args.inputs], Path(args.results), Path(args.out_csv),
                                  Path(args.out_md), Path(args.out_png))
    log("linear probes: " + ", ".join(f"{c} rho {rho:.2f} over {n}" for c, (rho, n) in summary["correlations"].items()))


def cmd_figure2(args) -> None:
    from vlmswap.diagnostics.figure2 import figure2_cell

    study, cell, vlm = _trained_cell(args)
    figure2_cell(study, cell, vlm, Path(args.index), Path(args.eval), Path(args.out), log=log)


def cmd_figure2_figure(args) -> None:
    from vlmswap.diagnostics.figure2 import write_figure2

    study = _study(args)
    write_figure2([Path(p) for p in args.inputs], Path(args.out_png), f"Figure 2 ({study.name} study)")
    log(f"figure 2 -> {args.out_png}")
