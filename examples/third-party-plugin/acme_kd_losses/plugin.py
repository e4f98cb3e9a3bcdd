"""kdcore entry point: declares the components; imports no torch code (factories are strings)."""

import kdcore


@kdcore.hookimpl
def kdcore_losses():
    """The losses this distribution adds to kdcore, used in configs as ``type: cosine_feature``."""
    return [
        kdcore.Component(
            "cosine_feature",
            "acme_kd_losses.losses:CosineFeatureLoss",
            "1 - cosine similarity of student and teacher features (per sample or per position)",
        ),
    ]
