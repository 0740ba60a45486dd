"""Appendix B stage ablation: the token count of every ablation cell, checked against the config.

`diagnostics.stage_ablation` names hierarchical backbones, one geometry and the taps to compare
(stages 2, 3, 4); `vlmswap.study` turns them into cells and the `stage-ablation` table. Here each
cell's backbone is built on the meta device (no weights, no download) and its `num_tokens` at the
geometry compared with `tokens` of the config: at 224, stage k of a Swin-style backbone has
(224 / 2^(k+1))^2 tokens, 784 / 196 / 49 (paper, Appendix B).
"""

from __future__ import annotations

from vlmswap.study import STAGE_TABLE, ConfigError, Study


def check_stage_tokens(study: Study) -> list[str]:
    """One line per ablation cell with its token count; a ConfigError naming the cell on a mismatch."""
    import torch

    from vlmswap.vision.registry import build_backbone
    from vlmswap.vlm import backbone_arch

    spec = study.raw.get("diagnostics", {}).get("stage_ablation")
    if not spec:
        return []
    lines = []
    for cell in study.cells_of_table(STAGE_TABLE):
        backbone = study.backbones[cell.backbone]
        with torch.device("meta"):
            built = build_backbone(backbone.family, backbone_arch(study, cell), cell.tap, cell.geometry)
        tokens = built.num_tokens(cell.geometry.width, cell.geometry.height)
        expected = int(spec["tokens"][cell.tap])
        if tokens != expected:
            raise ConfigError(study.path, f"diagnostics.stage_ablation.tokens.{cell.tap}",
                              f"{cell.id} gives {tokens} visual tokens at {cell.geometry}, the config expects "
                              f"{expected}; correct the expected count or the tap")
        lines.append(f"{cell.id}: {tokens} visual tokens (stage ablation, as expected)")
    return lines
