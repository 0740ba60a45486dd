"""Frozen vision backbones: one file per family behind one interface (`base.VisionBackbone`).

    from vlmswap.vision.registry import build_backbone
    backbone = build_backbone("vmamba", "vmamba-t", "stage3", Geometry.parse("224"))
    backbone.load_official(checkpoint_object)
    tokens = backbone(pixels)              # (B, backbone.num_tokens(224, 224), backbone.embed_dim)

`registry` is the only list of families; `scan` holds the selective scan and VMamba's
cross-scan/cross-merge; `pretrain` trains tiny members on the mini world.
"""
