"""radlens.explain: why did the model decide, and did it look at the lesion or at a shortcut?

One call for every method::

    from radlens.explain import explain
    e = explain(model, images, target=1, method="lrp_epsilon")
    e.heatmap, e.diagnostics["conservation_error"]

Any model plugs in with a target that reads its output (:mod:`radlens.explain.targets`).
``import_zennit()`` gives the zennit package without torchvision, for your own LRP composites.
"""

from radlens.explain._zennit_compat import import_zennit
from radlens.explain.api import METHODS, Explanation, Method, explain
from radlens.explain.methods._common import TokenLayout
from radlens.explain.render import merge_word_pieces, save_heatmap_png, save_tokens_html, tokens_html
from radlens.explain.targets import ClassTarget, PixelSetTarget, PixelTarget, ScoreTarget, Target

__all__ = [
    "METHODS",
    "ClassTarget",
    "Explanation",
    "Method",
    "PixelSetTarget",
    "PixelTarget",
    "ScoreTarget",
    "Target",
    "TokenLayout",
    "explain",
    "import_zennit",
    "merge_word_pieces",
    "save_heatmap_png",
    "save_tokens_html",
    "tokens_html",
]
